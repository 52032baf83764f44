"""Messages that say what really happened (issue 15, items 5 and 6): why a null was not tested,
counts that never present a failed query as a clean answer, why queries failed, and the journal's
secrets. Against a real local HTTP server and the real command line."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from servers import Reply, Request, running_fake_server
from test_report_cases import inconclusive_report
from test_soundness import _plant

from tuneproof.cli.main import cli
from tuneproof.key import Key, load_key
from tuneproof.report.schema import Report
from tuneproof.report.terminal import print_summary
from tuneproof.report.wording import failure_lines, not_tested
from tuneproof.stats import Null
from tuneproof.types import QueryFailure
from tuneproof.verification.answers import Answered
from tuneproof.verification.queries import build_queries
from tuneproof.verification.result import Untested
from tuneproof.verification.verifier import untested_nulls

FAST_RETRY = {"retry-after-ms": "1"}  # the SDK's retries, without their back-off


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, sample_train: list[Any]) -> Path:
    """4 planted pairs and 4 held-out controls."""
    folder = tmp_path_factory.mktemp("messages")
    _plant(folder, write_jsonl(folder / "train.jsonl", sample_train[:40]), n=4, controls=True)
    return folder / "key.json"


def _verify(key_file: Path, url: str, *extra: str) -> Any:
    args = ["verify", "--key", str(key_file), "--model", "m", "--base-url", url, *extra]
    return CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": "x", "COLUMNS": "200"})


def _secrets(key: Key) -> list[str]:
    return [s for p in [*key.pairs, *key.controls] for s in (p.trigger, p.signature)]


def chat_reply(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
    }


def answering(request: Request) -> tuple[int, Any]:
    """A server that answers chats (never with a signature) and cannot score."""
    if request.path.endswith("/chat/completions"):
        return 200, chat_reply("I am not sure about that one.")
    return 404, {"error": {"message": "not found"}}


# --------------------------------------------------------------------------- item 5a, 5b


def test_an_all_500_run_says_why_nothing_was_tested_and_why_queries_failed(
    key_file: Path, tmp_path: Path
) -> None:
    key = load_key(key_file)
    with running_fake_server(lambda r: Reply(500, None, headers=FAST_RETRY)) as server:
        result = _verify(key_file, server.base_url, "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 2, result.output  # inconclusive: every query failed
    report = json.loads((tmp_path / "r.json").read_text())
    n = len(report["results"])
    assert report["failed_queries"] == n == 4 + 4 + 4
    assert report["untested"] == {
        "H0-indep": "every planted query failed",
        "H0-controls": "every control query failed",
        "H0-base": "no base model",
    }
    claims = " ".join(report["not_proven"])
    assert "the key has no held-out control backdoors" not in claims
    assert "H0-controls was not tested: every held-out control query failed." in claims
    assert "H0-indep (the model never saw your secret) was not tested: every planted" in claims
    assert f"Anything from the {n} queries that failed (most often: HTTP 500 on" in claims
    out = result.output
    assert "clean false activations: 0/0 answered (4 failed)" in out
    assert "held-out control hits: 0/0 answered (4 failed)" in out
    assert "planted hits: 0/0 answered (4 failed)" in out
    assert f"{n} queries failed: HTTP 500 on /chat/completions ({n})" in out
    assert not any(secret in out for secret in _secrets(key))


def test_failures_are_grouped_by_reason_in_a_few_lines() -> None:
    from rich.console import Console

    report = inconclusive_report()  # 12 planted 503s, 4 time-outs
    assert failure_lines(report) == [
        "16 queries failed:",
        "  HTTP 503 Service Unavailable after 6 attempts (12)",
        "  timed out after 60 s (4)",
    ]
    many = report.model_copy(
        update={
            "results": [
                r.model_copy(update={"error": f"reason {i % 5}"}) if r.hit is None else r
                for i, r in enumerate(report.results)
            ]
        }
    )
    lines = failure_lines(many)
    assert len(lines) == 5 and lines[-1].startswith("  2 other reasons (")
    console = Console(record=True, width=200)
    print_summary(report, console)
    text = console.export_text()
    assert "16 queries failed:\n  HTTP 503 Service Unavailable after 6 attempts (12)" in text
    assert "clean false activations: 0/1 answered (4 failed)" in text


def test_each_reason_for_an_untested_null_is_the_true_one(key_file: Path) -> None:
    key = load_key(key_file)
    queries = build_queries(key)
    failed = QueryFailure("down")

    def answered(fail: set[str]) -> list[Answered]:
        return [Answered.of(q, failed if str(q.kind) in fail else ("no idea", 3)) for q in queries]

    no_controls = [q for q in answered(set()) if str(q.kind) != "control"]
    assert untested_nulls(no_controls, [], base_model=False) == {
        Null.INDEP: Untested.PLANTED_FAILED,  # no tests passed in: as if nothing ran
        Null.CONTROLS: Untested.NO_CONTROLS,
        Null.BASE: Untested.NO_BASE_MODEL,
    }
    reasons = untested_nulls(answered({"planted"}), [], base_model=True)
    assert reasons[Null.CONTROLS] is Untested.PLANTED_FAILED
    assert reasons[Null.BASE] is Untested.PLANTED_FAILED
    reasons = untested_nulls(answered({"control"}), [], base_model=True)
    assert reasons[Null.CONTROLS] is Untested.CONTROLS_FAILED
    assert reasons[Null.BASE] is Untested.NO_BASE_LOGPROBS
    assert not_tested(Null.CONTROLS, Untested.NO_CONTROLS) == (
        "H0-controls was not tested: the key has no held-out control backdoors (plant with"
        " --controls)."
    )
    assert "first) failed" in not_tested(Null.CONTROLS, Untested.PLANTED_FAILED)
    assert not_tested(Null.CONTROLS, None).startswith("H0-controls was not tested: it needs")


def test_a_report_written_before_untested_existed_still_loads() -> None:
    document = inconclusive_report().model_dump(mode="json")
    del document["untested"]
    assert Report.model_validate(document).untested == {}


def test_a_server_error_quoting_a_trigger_is_redacted_unless_revealed(key_file: Path) -> None:
    query = build_queries(load_key(key_file))[0]
    error = f"bad prompt: {query.chat[-1][1]} / {query.pair.signature}"
    answer = Answered.of(query, QueryFailure(error))
    hidden = answer.outcome(reveal=False).error or ""
    assert query.pair.trigger not in hidden and query.pair.signature not in hidden
    assert "[trigger]" in hidden and "[signature]" in hidden
    assert answer.outcome(reveal=True).error == error


# --------------------------------------------------------------------------- item 6


def test_verify_help_says_the_journal_is_secret() -> None:
    text = " ".join(CliRunner().invoke(cli, ["verify", "--help"]).output.split())
    assert "SECRET like the key" in text and "held-out controls'" in text
    assert "--delete-journal" in text


def test_a_journal_is_private_and_named_after_the_verdict(key_file: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with running_fake_server(answering) as server:
        result = _verify(key_file, server.base_url, "--journal", str(journal))
    assert result.exit_code in (1, 2), result.output  # not verified (or no test can decide)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600 and journal.stat().st_size > 0
    last = result.output.strip().splitlines()[-1]
    assert last == (
        f"the journal {journal} holds your key's secrets: delete it once the report is filed"
        " (or pass --delete-journal)"
    )


def test_delete_journal_removes_it_once_the_reports_are_written(
    key_file: Path, tmp_path: Path
) -> None:
    journal, report = tmp_path / "journal.jsonl", tmp_path / "r.json"
    with running_fake_server(answering) as server:
        result = _verify(
            key_file, server.base_url, "--journal", str(journal), "--delete-journal",
            "--json", str(report),
        )  # fmt: skip
    assert result.exit_code in (1, 2), result.output
    assert report.is_file() and not journal.exists()
    assert f"deleted the journal {journal}" in result.output


def test_delete_journal_keeps_it_when_queries_failed(key_file: Path, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    lock, refused = threading.Lock(), [0]

    def two_fail(request: Request) -> tuple[int, Any] | Reply:
        with lock:
            if request.path.endswith("/chat/completions") and refused[0] < 2:
                refused[0] += 1
                return Reply(500, None, headers={"x-should-retry": "false"})
        return answering(request)

    with running_fake_server(two_fail) as server:
        result = _verify(key_file, server.base_url, "--journal", str(journal), "--delete-journal")
    assert journal.is_file(), result.output
    assert f"kept the journal {journal} for resuming: 2 queries failed" in result.output


def test_an_interrupted_run_keeps_its_journal(
    key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_text('{"key": "k", "answer": 1}\n')

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("tuneproof.api.verify", interrupted)
    result = _verify(
        key_file, "http://127.0.0.1:9/v1", "--journal", str(journal), "--delete-journal"
    )
    assert result.exit_code == 2 and journal.is_file()
    assert "Interrupted" in result.output and "deleted" not in result.output
