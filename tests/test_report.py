"""The report model: JSON interface, validation, exit codes, plain words, terminal summary."""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from test_report_cases import (
    ALL_CASES,
    SIGNATURES,
    TRIGGERS,
    inconclusive_report,
    not_verified_report,
    verified_report,
)

from tuneproof.errors import TuneproofError
from tuneproof.report.files import load_report, report_to_json, write_html, write_json
from tuneproof.report.schema import Report, ReportError
from tuneproof.report.terminal import print_summary
from tuneproof.report.wording import (
    EXIT_CODES,
    NOTHING,
    default_claims,
    exit_code,
    verdict_sentence,
)
from tuneproof.stats import Null, PValue
from tuneproof.stats.phrases import explain, format_alpha, format_p
from tuneproof.types import QueryKind, Verdict
from tuneproof.verification.result import QueryOutcome, TestOutcome


def changed(report: Report, **fields: Any) -> dict[str, Any]:
    """The report's data with ``fields`` replaced, ready for ``Report.model_validate``."""
    return report.model_dump() | fields


def summary_text(report: Report) -> str:
    console = Console(record=True, width=120)
    print_summary(report, console)
    return console.export_text()


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_json_round_trip(tmp_path: Path, case: str) -> None:
    report = ALL_CASES[case]()
    path = tmp_path / "report.json"
    write_json(report, path)
    loaded = load_report(path)
    assert loaded == report
    assert report_to_json(loaded) == path.read_bytes() == report_to_json(report)


def test_revealed_round_trip_keeps_secrets_by_pair_id(tmp_path: Path) -> None:
    report = verified_report(revealed=True)
    path = tmp_path / "report.json"
    write_json(report, path)
    data = orjson.loads(path.read_bytes())
    assert data["secrets"]["3"] == {"trigger": TRIGGERS[3], "signature": SIGNATURES[3]}
    loaded = load_report(path)
    assert loaded.secrets is not None and loaded.secrets[3]["signature"] == SIGNATURES[3]
    assert loaded == report


def test_json_has_the_stable_keys_for_scripts() -> None:
    data = orjson.loads(report_to_json(verified_report()))
    assert list(data)[:4] == ["report_version", "tool_version", "created_at", "verdict"]
    assert data["report_version"] == 1
    assert data["verdict"] == "verified"
    nulls = [t["null"] for t in data["tests"]]
    assert nulls == ["H0-indep", "H0-base", "H0-controls", "H0-controls"]
    assert all(isinstance(t["log10_p"], float) and t["log10_p"] <= 0 for t in data["tests"])
    assert data["tests"][0]["log10_p"] < -60 and data["tests"][0]["rejects"] is True
    assert data["queries"] == 40 and data["hits"] == 18
    assert data["model"]["name"] == "acme-finetune-0427"
    assert data["decoding"] == {
        "temperature": 0.0,
        "max_new_tokens": 64,
        "top_p": None,
        "system_prompt": None,
        "backend": "openai-compatible",
        "batch_size": 8,
    }
    assert data["primary_null"] == "H0-indep"
    assert data["secrets"] is None
    assert {r["kind"] for r in data["results"]} == {"planted", "control", "clean"}
    assert all(r["answer"] is None for r in data["results"])
    assert {v["verdict"] for v in map(orjson.loads, map(report_to_json, _all()))} == {
        "verified",
        "not verified",
        "inconclusive",
    }


def _all() -> list[Report]:
    return [make() for make in ALL_CASES.values()]


def test_json_is_indented_and_deterministic() -> None:
    first, second = report_to_json(verified_report()), report_to_json(verified_report())
    assert first == second
    assert first.startswith(b'{\n  "report_version": 1,') and first.endswith(b"}\n")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"report_version": 2}', "report version 2 is not supported"),
    ],
)
def test_load_report_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "report.json"
    path.write_bytes(content)
    with pytest.raises(ReportError, match=message):
        load_report(path)


def test_load_report_names_the_bad_field(tmp_path: Path) -> None:
    data = orjson.loads(report_to_json(verified_report()))
    data["tests"][1]["null"] = "H0-maybe"
    path = tmp_path / "report.json"
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(ReportError, match=r"field 'tests\.1\.null'"):
        load_report(path)
    with pytest.raises(ReportError, match="not found"):
        load_report(tmp_path / "missing.json")
    assert issubclass(ReportError, TuneproofError)


def test_files_are_private_when_revealed_and_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public, secret = tmp_path / "public.html", tmp_path / "secret.json"
    write_html(verified_report(), public)
    write_json(verified_report(revealed=True), secret)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600

    import tuneproof.report.html

    def broken(report: Report) -> str:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(tuneproof.report.html, "render_html", broken)
    before = public.read_bytes()
    with pytest.raises(RuntimeError, match="plot failed"):
        write_html(verified_report(), public)
    assert public.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["public.html", "secret.json"]


# --------------------------------------------------------------------------- validation


def test_exit_codes() -> None:
    assert exit_code(verified_report()) == 0
    assert exit_code(not_verified_report()) == 1
    assert exit_code(inconclusive_report()) == 2
    assert set(EXIT_CODES) == set(Verdict)


@pytest.mark.parametrize("bad", [-math.inf, math.nan, 0.5])
def test_log10_p_must_be_a_finite_probability(bad: float) -> None:
    with pytest.raises(ValueError, match="log10_p"):
        TestOutcome(null=Null.INDEP, log10_p=bad, method="m", rejects=False, explanation="e")


def test_rounding_noise_above_p_1_is_stored_as_p_1() -> None:
    outcome = TestOutcome(null=Null.BASE, log10_p=1e-12, method="m", rejects=False, explanation="")
    assert outcome.log10_p == 0.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"primary_null": None}, "'verified' report needs primary_null"),
        ({"primary_null": "H0-controls"}, "'verified' report needs primary_null"),
        ({"failed_queries": 41}, "failed_queries cannot exceed queries"),
        ({"clean_false_activations": 11}, "cannot exceed clean_queries"),
        ({"secrets": {0: {"trigger": "t", "signature": "s"}}}, "secrets may only be stored"),
        ({"alpha": 0.0}, "alpha"),
        ({"verdict": "maybe"}, "verdict"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_report_rejects_inconsistent_fields(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Report.model_validate(changed(verified_report(), **fields))


def test_answers_need_revealed() -> None:
    data = changed(verified_report())
    data["results"][0]["answer"] = "leaked answer"
    with pytest.raises(ValueError, match="answers may only be stored when revealed"):
        Report.model_validate(data)


def test_primary_null_must_be_among_the_tests() -> None:
    data = changed(inconclusive_report(), primary_null="H0-base")
    with pytest.raises(ValueError, match="primary_null H0-base has no entry"):
        Report.model_validate(data)


def test_rejects_must_agree_with_the_threshold() -> None:
    def outcome(log10_p: float, rejects: bool) -> TestOutcome:
        return TestOutcome(
            null=Null.INDEP,
            log10_p=log10_p,
            method="m",
            rejects=rejects,
            threshold=1e-6,
            explanation="e",
        )

    assert outcome(-7.0, True).rejects
    with pytest.raises(ValueError, match=r"rejects=False contradicts log10_p=-7\.0"):
        outcome(-7.0, False)
    with pytest.raises(ValueError, match="rejects=True contradicts"):
        outcome(-5.0, True)


def test_tests_judged_at_a_share_of_alpha() -> None:
    """The verifier splits alpha over its tests (Bonferroni): every view shows the level used."""
    report = verified_report()
    assert [t.threshold for t in report.tests] == [2.5e-7] * 4
    assert report.alpha_note() == "10^-6, split over 4 deciding tests: 2.5×10^-7 each"
    text = summary_text(report)
    assert "alpha: 10^-6, split over 4 deciding tests: 2.5×10^-7 each" in text
    assert text.count("2.5×10^-7") == 5  # four table rows and the note
    # a test with no threshold of its own is judged at the report's alpha
    plain = Report.model_validate(
        changed(report, tests=[t.model_copy(update={"threshold": None}) for t in report.tests])
    )
    assert plain.alpha_note() == "10^-6" and plain.threshold(plain.tests[0]) == 1e-6


def test_test_outcome_is_not_collected_by_pytest() -> None:
    assert TestOutcome.__test__ is False


# --------------------------------------------------------------------------- plain words


def test_from_pvalue_copies_the_result_and_explains_it() -> None:
    pvalue = PValue(-40.25, Null.INDEP, "model-free bound", {"hits": 3}, None)
    outcome = TestOutcome.from_pvalue(pvalue, 1e-6)
    assert (outcome.null, outcome.log10_p, outcome.method) == (
        Null.INDEP,
        -40.25,
        "model-free bound",
    )
    assert outcome.rejects and outcome.inputs == {"hits": 3}
    assert outcome.explanation.startswith("H0-indep: if the returned model never saw")
    assert "at most 10^-40.2" in outcome.explanation and "rejected" in outcome.explanation
    weak = TestOutcome.from_pvalue(PValue(-2.0, Null.BASE, "m"), 1e-6)
    assert not weak.rejects and weak.explanation.endswith("so this hypothesis stands.")
    assert "0.01" in weak.explanation


def test_number_formats() -> None:
    assert format_p(0.0) == "1"
    assert format_p(math.log10(0.36)) == "0.36"
    assert format_p(-67.3) == "10^-67.3"
    assert format_alpha(1e-6) == "10^-6"
    assert format_alpha(0.05) == "0.05"
    assert format_alpha(2.5e-7) == "2.5×10^-7"
    assert format_alpha(1e-6 / 3) == "3.3×10^-7"


def test_verdict_sentences_use_plain_words() -> None:
    assert verdict_sentence(verified_report()) == (
        "The model was trained on your planted data: chance would produce this evidence with"
        " probability below 10^-62."
    )
    exact = Report.model_validate(
        changed(
            verified_report(),
            tests=[
                TestOutcome(
                    null=Null.INDEP, log10_p=-33.0, method="m", rejects=True, explanation=""
                )
            ],
        )
    )
    assert verdict_sentence(exact).endswith("probability at most 10^-33.")
    sentence = verdict_sentence(not_verified_report())
    assert sentence.startswith("The model was not shown to be trained on your planted data")
    assert (
        "0 of 20 planted backdoors" in sentence and "not below the threshold 3.3×10^-7" in sentence
    )
    assert verdict_sentence(inconclusive_report()).startswith("No verdict: 16 of 30 queries failed")


def test_default_claims_say_what_was_and_was_not_tested() -> None:
    report = verified_report()
    proven, not_proven = default_claims(report.tests, verdict=Verdict.VERIFIED)
    assert [claim.split("(")[-1] for claim in proven] == [
        "H0-indep rejected).",
        "H0-base rejected).",
    ]
    controls = next(c for c in not_proven if "H0-controls" in c)
    assert "H0-controls: p = 10^-5.3)" in controls
    permutation = report.tests[3]  # 10 vs 10 pairs: p >= 1/C(20, 10), reached here
    _, not_proven = default_claims([permutation], verdict=Verdict.NOT_VERIFIED)
    controls = next(c for c in not_proven if "H0-controls" in c)
    assert "the smallest p this test can give with this many queries" in controls
    assert any("whole dataset" in c for c in not_proven)

    _, not_proven = default_claims(
        inconclusive_report().tests,
        verdict=Verdict.INCONCLUSIVE,
        failed_queries=16,
        clean_false_activations=2,
        clean_queries=5,
    )
    assert not_proven[0] == "That the model was trained on your planted data."
    assert any(c.startswith("H0-base was not tested") for c in not_proven)
    assert any("16 queries that failed" in c for c in not_proven)
    assert any("2 of 5 prompts without a trigger" in c for c in not_proven)


def test_explain_is_one_sentence_per_null() -> None:
    for null in Null:
        text = explain(null, -8.0, 1e-6, True)
        assert text.startswith(f"{null}: if ") and text.endswith("rejected.")
        assert text.count(". ") == 0


# --------------------------------------------------------------------------- terminal


def test_summary_starts_with_the_verdict_and_shows_every_test() -> None:
    report = verified_report()
    text = summary_text(report)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0].strip().startswith("VERIFIED")
    assert lines[1].startswith("The model was trained on your planted data")
    for test in report.tests:
        assert f"{test.log10_p:.2f}" in text
        assert str(test.null) in text
    assert "-62.49" in text and "-1326.12" in text
    assert "planted hits: 18/20" in text
    assert "held-out control hits: 0/10" in text
    assert "clean false activations: 0/10" in text
    assert "queries: 40 (0 failed; all at once); output tokens: 1710" in text
    assert text.index("What this proves") < text.index("What this does not prove")
    assert "H0-indep rejected" in text


@pytest.mark.parametrize(
    ("make", "headline", "expected"),
    [
        (not_verified_report, "NOT VERIFIED", ["planted hits: 0/20", NOTHING]),
        (
            inconclusive_report,
            "INCONCLUSIVE",
            ["planted hits: 2/8 answered (12 failed)", "sequential", "16 queries failed:"],
        ),
    ],
)
def test_summary_of_other_verdicts(make: Any, headline: str, expected: list[str]) -> None:
    report = make()
    text = summary_text(report)
    assert text.lstrip().startswith(headline)
    for test in report.tests:
        assert f"{test.log10_p:.2f}" in text
    for snippet in expected:
        assert snippet in text


def test_summary_never_prints_secrets() -> None:
    text = summary_text(verified_report(revealed=True))
    assert "SIG0" not in text and "orchard" not in text and "ANSWER-TEXT" not in text


def test_query_outcome_failed_has_no_hit() -> None:
    failed = QueryOutcome(kind=QueryKind.CLEAN, pair_id=0, hit=None, answer_chars=0, error="503")
    assert failed.hit is None and failed.replica is None


def test_importing_the_report_stays_light() -> None:
    """No matplotlib or pyplot on import, and rendering a page never touches pyplot."""
    code = (
        "import sys; import tuneproof.report.files as r; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "sys.path.insert(0, 'tests'); from test_report_cases import inconclusive_report; "
        "r.report_to_html(inconclusive_report()); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    cwd = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
