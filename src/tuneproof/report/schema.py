"""The verification report: a versioned pydantic model, its JSON form, the exit code, a terminal
summary (:mod:`tuneproof.report.terminal`) and a self-contained HTML page (built by
:mod:`tuneproof.report.html`).

The JSON document is a stable interface for scripts. Its top-level keys include ``verdict``
(``"verified"``, ``"not verified"`` or ``"inconclusive"``), ``tests`` (each with ``null`` —
``"H0-base"``, ``"H0-indep"`` or ``"H0-controls"`` — and ``log10_p``), ``queries``, ``hits``,
``model`` and ``decoding``; ``report_version`` changes whenever an existing key changes meaning.
Secrets (triggers, signatures) and the model's answers are stored only when the report was made
with ``revealed=True``; the model refuses them otherwise, so a shared report cannot leak them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneproof import __version__
from tuneproof.atomic import atomic_output
from tuneproof.errors import TuneproofError, describe_validation_error
from tuneproof.stats import Null, PValue
from tuneproof.types import ModelIdentity, QueryKind, Verdict, now_utc

REPORT_VERSION = 1

# A log10 p-value this far above 0 is floating-point noise around p = 1 and is stored as 0.0.
_LOG10_P_SLACK = 1e-6


class ReportError(TuneproofError):
    """A report file is missing, unreadable, or does not validate."""


NOTHING = "Nothing: no test reached the threshold."

EXIT_CODES: dict[Verdict, int] = {
    Verdict.VERIFIED: 0,
    Verdict.NOT_VERIFIED: 1,
    Verdict.INCONCLUSIVE: 2,
}

# What each null claims, and what its p-value measures, in plain words.
NULL_CLAIM: dict[Null, str] = {
    Null.BASE: "the returned model is just the unchanged base model",
    Null.INDEP: "the returned model never saw your secret backdoors",
    Null.CONTROLS: (
        "the returned model treats the backdoors you planted like the ones you kept private"
    ),
}
_NULL_EVIDENCE: dict[Null, str] = {
    Null.BASE: "the base model would produce this many secret signatures",
    Null.INDEP: (
        "a model that never saw them would match (or prefer over their decoys) this many"
        " secret signatures"
    ),
    Null.CONTROLS: "the planted backdoors would stand out this much from the held-out ones",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TestOutcome(_Strict):
    """The result of one test: which null, its log10 p-value, and whether it was rejected."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    null: Null
    log10_p: float = Field(description="log10 of the p-value (finite, <= 0)")
    method: str
    rejects: bool = Field(description="whether p < threshold")
    threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description=(
            "the level this test was judged at (p < threshold rejects): the report's alpha, or"
            " a share of it when several tests run (Bonferroni); None means the report's alpha"
        ),
    )
    log10_resolution: float | None = Field(
        default=None, description="log10 of the smallest p-value the method can return"
    )
    log10_floor: float | None = Field(
        default=None,
        description="log10 of the smallest p-value this test could give with this key and these"
        " queries, fixed before the first answer (-inf written as null)",
    )
    decides: bool = Field(
        default=True,
        description="whether this test may decide the verdict (and takes a share of alpha);"
        " a test that cannot is reported only, and never rejects",
    )
    note: str | None = Field(default=None, description="why the test does not decide")
    inputs: dict[str, Any] = Field(default_factory=dict)
    explanation: str = Field(description="one plain-English sentence on what the null means")

    @field_validator("log10_p")
    @classmethod
    def _finite_log10_p(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(
                "log10_p must be finite (JSON has no infinity; p = 0 exactly means the test's"
                " inputs are impossible - check the hit counts)"
            )
        if value > _LOG10_P_SLACK:
            raise ValueError(f"log10_p must be <= 0 (a p-value is at most 1), got {value}")
        return min(value, 0.0)

    @field_validator("log10_resolution")
    @classmethod
    def _finite_resolution(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("log10_resolution must be finite or null")
        return value

    @field_validator("log10_floor")
    @classmethod
    def _floor_or_none(cls, value: float | None) -> float | None:
        return value if value is None or math.isfinite(value) else None

    @model_validator(mode="after")
    def _rejects_matches_threshold(self) -> TestOutcome:
        if not self.decides:
            if self.rejects:
                raise ValueError("a test that does not decide (decides=false) cannot reject")
            return self
        if self.threshold is not None and self.rejects != (
            self.log10_p < math.log10(self.threshold)
        ):
            raise ValueError(
                f"rejects={self.rejects} contradicts log10_p={self.log10_p} and threshold="
                f"{self.threshold} (rejects must say whether p < threshold)"
            )
        return self

    @classmethod
    def from_pvalue(
        cls,
        pvalue: PValue,
        alpha: float,
        *,
        explanation: str | None = None,
        decides: bool = True,
        note: str | None = None,
        log10_floor: float | None = None,
    ) -> TestOutcome:
        """Build an outcome from a :class:`~tuneproof.stats.PValue` judged at level ``alpha``
        (pass the per-test share when several tests split the report's alpha). A test that
        does not ``decides`` never rejects; ``note`` says why.

        ``threshold`` records ``alpha``; ``explanation`` defaults to :func:`explain`'s sentence.
        """
        rejects = decides and pvalue.rejects(alpha)
        if explanation is None:
            explanation = explain(pvalue.null, pvalue.log10_p, alpha, rejects)
            if not decides:
                explanation = (
                    f"{pvalue.null}: p = {format_p(pvalue.log10_p)}, reported only - this test"
                    f" {note or 'does not decide the verdict'}."
                )
        return cls(
            null=pvalue.null,
            log10_p=pvalue.log10_p,
            method=pvalue.method,
            rejects=rejects,
            threshold=alpha,
            log10_resolution=pvalue.log10_resolution,
            log10_floor=log10_floor,
            decides=decides,
            note=note,
            inputs=dict(pvalue.inputs),
            explanation=explanation,
        )


class QueryOutcome(_Strict):
    """One query sent to the verified model and what came back."""

    kind: QueryKind
    pair_id: int = Field(ge=0)
    replica: int | None = Field(default=None, ge=0)
    hit: bool | None = Field(description="whether the signature occurred; None if the query failed")
    matched_tokens: int | None = Field(
        default=None, ge=0, description="whole signature tokens the answer starts with"
    )
    decoy_rank: int | None = Field(
        default=None,
        ge=1,
        description="rank of the true signature's log-likelihood among its decoys (1 = first)",
    )
    answer: str | None = Field(default=None, description="the answer; only when revealed")
    answer_chars: int = Field(ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    signature_logprob: float | None = Field(
        default=None, description="log-probability (nats) of the signature, verified model"
    )
    base_signature_logprob: float | None = Field(
        default=None, description="log-probability (nats) of the signature, base model"
    )
    error: str | None = None


class Decoding(_Strict):
    """How the answers were produced."""

    temperature: float = Field(default=0.0, ge=0.0)
    max_new_tokens: int = Field(ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    system_prompt: str | None = None
    backend: str
    batch_size: int | None = Field(default=None, ge=1)


class Report(_Strict):
    """A verification report (version 1). See the module docstring for the stable keys."""

    report_version: Literal[1] = 1
    tool_version: str = __version__
    created_at: str = Field(default_factory=now_utc)
    verdict: Verdict
    alpha: float = Field(gt=0.0, lt=1.0)
    primary_null: Null | None = Field(description="the null whose rejection decided 'verified'")
    log10_p_corrected: float | None = Field(
        default=None,
        description="the headline p-value: the smallest p of the deciding tests times"
        " `correction`, capped at 1 (below alpha exactly when the verdict is 'verified')",
    )
    correction: int = Field(
        default=1,
        ge=1,
        description="what alpha was split over: deciding tests x looks (Bonferroni)",
    )
    looks: int = Field(
        default=1,
        ge=1,
        description="how many times the evidence could be judged: one per planted query in"
        " sequential mode, else one",
    )
    model: ModelIdentity
    base_model: ModelIdentity | None = None
    decoding: Decoding
    key_commitment: str
    tests: list[TestOutcome]
    queries: int = Field(ge=0)
    failed_queries: int = Field(ge=0)
    tokens: int = Field(ge=0, description="output tokens spent")
    hits: int = Field(ge=0, description="planted queries whose answer held the signature")
    clean_false_activations: int = Field(ge=0)
    clean_queries: int = Field(ge=0)
    sequential: bool
    stopped_early: bool
    revealed: bool
    proven: list[str]
    not_proven: list[str]
    results: list[QueryOutcome]
    secrets: dict[int, dict[str, str]] | None = Field(
        default=None, description="pair_id -> {'trigger', 'signature'}; only when revealed"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Report:
        if self.failed_queries > self.queries:
            raise ValueError("failed_queries cannot exceed queries")
        if self.clean_false_activations > self.clean_queries:
            raise ValueError("clean_false_activations cannot exceed clean_queries")
        nulls = {test.null for test in self.tests}
        if self.primary_null is not None and self.primary_null not in nulls:
            raise ValueError(f"primary_null {self.primary_null} has no entry in tests")
        if self.verdict is Verdict.VERIFIED and not any(
            test.rejects and test.null == self.primary_null for test in self.tests
        ):
            raise ValueError("a 'verified' report needs primary_null set to a null it rejected")
        if not self.revealed:
            if self.secrets is not None:
                raise ValueError("secrets may only be stored when revealed is true")
            if any(result.answer is not None for result in self.results):
                raise ValueError("answers may only be stored when revealed is true")
        return self

    # ---------------------------------------------------------------- derived figures

    def tally(self, kind: QueryKind) -> tuple[int, int, int]:
        """(hits, answered, failed) over the results of ``kind``."""
        rows = [r for r in self.results if r.kind is kind]
        hits = sum(1 for r in rows if r.hit)
        failed = sum(1 for r in rows if r.hit is None)
        return hits, len(rows) - failed, failed

    def threshold(self, test: TestOutcome) -> float:
        """The level ``test`` was judged at: its own threshold, else the report's alpha."""
        return self.alpha if test.threshold is None else test.threshold

    def alpha_note(self) -> str:
        """How alpha was applied, e.g. ``"10^-6, split over 4 tests: 2.5×10^-7 each"``."""
        deciding = [t for t in self.tests if t.decides]
        levels = {self.threshold(t) for t in deciding}
        if not levels or levels == {self.alpha}:
            return format_alpha(self.alpha)
        if len(levels) == 1:
            tests = len(deciding)
            looks = f" x {self.looks} looks" if self.looks > 1 else ""
            return (
                f"{format_alpha(self.alpha)}, split over {tests} deciding"
                f" test{'' if tests == 1 else 's'}{looks}: {format_alpha(levels.pop())} each"
            )
        return f"{format_alpha(self.alpha)}, split unevenly across the tests"

    def deciding_test(self) -> TestOutcome | None:
        """The test quoted in the verdict: the strongest deciding one for ``primary_null``
        when set, else the strongest deciding test (else any test; None when none ran)."""
        deciding = [t for t in self.tests if t.decides] or self.tests
        pool = [t for t in deciding if t.null == self.primary_null] or deciding
        return min(pool, key=lambda t: t.log10_p, default=None)

    def headline_log10_p(self) -> float | None:
        """The p-value to quote: the corrected one when recorded, else the deciding test's."""
        if self.log10_p_corrected is not None:
            return self.log10_p_corrected
        test = self.deciding_test()
        return None if test is None else test.log10_p


# --------------------------------------------------------------------------- plain words


def strongest_by_null(tests: Sequence[TestOutcome]) -> dict[Null, TestOutcome]:
    """The test with the smallest p-value for each null (several tests can share one null:
    H0-indep has the exact-hit bound and the prefix test), in first-seen order of the nulls."""
    best: dict[Null, TestOutcome] = {}
    for test in tests:
        if test.null not in best or test.log10_p < best[test.null].log10_p:
            best[test.null] = test
    return best


def format_p(log10_p: float) -> str:
    """A p-value for people: ``"0.62"`` above 0.001, else ``"10^-67.3"``."""
    if log10_p >= -3.0:
        return f"{10.0**log10_p:.2g}"
    return f"10^{log10_p:.1f}"


def format_alpha(alpha: float) -> str:
    """``1e-6`` -> ``"10^-6"``; ``2.5e-7`` -> ``"2.5×10^-7"``; ``0.05`` -> ``"0.05"``."""
    if alpha >= 1e-3:
        return f"{alpha:.3g}"
    exponent = math.floor(math.log10(alpha) + 1e-9)
    mantissa = alpha / 10.0**exponent
    if abs(mantissa - round(mantissa)) < 1e-6 and round(mantissa) == 1:
        return f"10^{exponent}"
    return f"{mantissa:.2g}×10^{exponent}"


def _chance_phrase(log10_p: float) -> str:
    """``"below 10^-33"`` for log10 p = -33.4: a round power of ten that is easy to read."""
    if log10_p >= -3.0:
        return f"of about {format_p(log10_p)}"
    exponent = math.floor(-log10_p)
    word = "below" if -log10_p > exponent else "at most"
    return f"{word} 10^-{exponent}"


def explain(null: Null, log10_p: float, alpha: float, rejects: bool) -> str:
    """One plain-English sentence: what ``null`` claims and whether it was rejected."""
    bound = "at most " if null is Null.INDEP else ""
    verdict = (
        "below the threshold alpha = {a}, so this hypothesis is rejected"
        if rejects
        else "not below the threshold alpha = {a}, so this hypothesis stands"
    ).format(a=format_alpha(alpha))
    return (
        f"{null}: if {NULL_CLAIM[null]}, {_NULL_EVIDENCE[null]} with probability "
        f"{bound}{format_p(log10_p)}, which is {verdict}."
    )


def verdict_headline(verdict: Verdict) -> str:
    """The verdict as a short headline, e.g. ``"VERIFIED"``."""
    return str(verdict).upper()


def verdict_sentence(report: Report) -> str:
    """One sentence a non-expert can act on (powers of ten written as ``10^-33``)."""
    test = report.deciding_test()
    threshold = format_alpha(report.alpha if test is None else report.threshold(test))
    _, answered, _ = report.tally(QueryKind.PLANTED)
    of_planted = f" of {answered}" if answered else ""
    headline = report.headline_log10_p()
    corrected = (
        f" (corrected for the {report.correction} looks and tests alpha was split over)"
        if report.log10_p_corrected is not None and report.correction > 1
        else ""
    )
    if report.verdict is Verdict.VERIFIED and test is not None and headline is not None:
        chance = _chance_phrase(headline) + corrected
        if test.null is Null.CONTROLS:
            return (
                "The model was trained on your planted data: it answers the backdoors you planted"
                " differently from the ones you kept private, and chance would produce this"
                f" difference with probability {chance}."
            )
        if test.null is Null.BASE:
            return (
                "The model was trained on your planted data: the unchanged base model would"
                f" produce these secret signatures with probability {chance}."
            )
        return (
            "The model was trained on your planted data: chance would produce this evidence"
            f" with probability {chance}."
        )
    if report.verdict is Verdict.NOT_VERIFIED:
        if test is None:
            return "The model was not shown to be trained on your planted data: no test could run."
        # a report written before the plan (no corrected p): its raw p against its share
        p, level = (
            (test.log10_p, threshold)
            if report.log10_p_corrected is None
            else (report.log10_p_corrected, format_alpha(report.alpha))
        )
        return (
            "The model was not shown to be trained on your planted data: it answered"
            f" {report.hits}{of_planted} planted backdoors with the secret signature, and the"
            f" strongest deciding test ({test.null}) gives p = {format_p(p)}{corrected}, not"
            f" below the threshold {level}."
        )
    if report.failed_queries:
        return (
            f"No verdict: {report.failed_queries} of {report.queries} queries failed, so the"
            " evidence is incomplete - run the verification again to finish them."
        )
    if report.tests and not any(t.decides for t in report.tests):
        return (
            "No verdict: with this key and these queries no test can reach the threshold"
            f" alpha = {format_alpha(report.alpha)} (each test's smallest attainable p-value is"
            " in the details below) - plant with more pairs or longer signatures."
        )
    best = "" if test is None else f" (strongest p = {format_p(test.log10_p)})"
    return (
        f"No verdict: the tests that could run do not settle the question{best} at the"
        f" threshold {threshold} - see the details below."
    )


def default_claims(
    tests: Sequence[TestOutcome],
    *,
    verdict: Verdict,
    failed_queries: int = 0,
    clean_false_activations: int = 0,
    clean_queries: int = 0,
) -> tuple[list[str], list[str]]:
    """Plain-English ``(proven, not_proven)`` lists for a report with these ``tests``."""
    proven: list[str] = []
    not_proven: list[str] = []
    best = strongest_by_null(tests)
    if verdict is not Verdict.VERIFIED:
        not_proven.append("That the model was trained on your planted data.")
    for null in (Null.INDEP, Null.CONTROLS, Null.BASE):
        if null not in best:
            not_proven.append(_NOT_TESTED[null])
            continue
        deciding = [t for t in tests if t.null == null and t.decides]
        test = min(deciding, key=lambda t: t.log10_p) if deciding else best[null]
        p = format_p(test.log10_p)
        if not test.decides:
            not_proven.append(
                f"Anything from {null} (p = {p}): it is reported only -"
                f" {test.note or 'it cannot decide the verdict'}."
            )
        elif test.rejects:
            proven.append(_PROVEN[null].format(p=p))
        else:
            floor = (
                test.log10_resolution is not None and test.log10_p <= test.log10_resolution + 1e-9
            )
            limit = ", the smallest p this test can give with this many queries" if floor else ""
            not_proven.append(
                f"The evidence does not rule out that {NULL_CLAIM[null]} ({null}: p = {p}{limit})."
            )
    if failed_queries:
        not_proven.append(
            f"Anything from the {failed_queries} queries that failed: they count as no evidence,"
            " and finishing them may strengthen the result."
        )
    if clean_false_activations:
        not_proven.append(
            f"That signatures need their trigger: {clean_false_activations} of {clean_queries}"
            " prompts without a trigger also produced a signature."
        )
    not_proven.append(
        "That your whole dataset was used, or for the agreed number of epochs: the test shows"
        " that the planted records were learnt, not how the other records were used."
    )
    not_proven.append("Anything about the quality of the model on your task.")
    return proven, not_proven


_PROVEN: dict[Null, str] = {
    Null.INDEP: (
        "The model learnt from your secret backdoors: a model that never saw them would match"
        " (or prefer over their decoys) this many secret signatures with probability at most"
        " {p} (H0-indep rejected)."
    ),
    Null.CONTROLS: (
        "The model learnt the backdoors planted in your dataset in particular: it treats them"
        " differently from the held-out ones you never uploaded (H0-controls rejected, p = {p})."
    ),
    Null.BASE: (
        "The model is not the unchanged base model: the base model would produce these secret"
        " signatures with probability {p} (H0-base rejected)."
    ),
}
_NOT_TESTED: dict[Null, str] = {
    Null.INDEP: "H0-indep (the model never saw your secret) was not tested.",
    Null.CONTROLS: "H0-controls was not tested: the key has no held-out control backdoors.",
    Null.BASE: (
        "H0-base was not tested: it needs the base model's log-probabilities"
        " (give the base model to compare with)."
    ),
}


# --------------------------------------------------------------------------- JSON and files


def report_to_json(report: Report) -> bytes:
    """The report as indented JSON (keys in the model's field order, which is stable)."""
    data = report.model_dump(mode="json")
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def write_json(report: Report, path: str | Path) -> None:
    """Write :func:`report_to_json` to ``path`` atomically (mode 0600 when secrets are revealed)."""
    with atomic_output(path, mode=0o600 if report.revealed else 0o644) as handle:
        handle.write(report_to_json(report))


def load_report(path: str | Path) -> Report:
    """Read and validate a JSON report; raises :class:`ReportError` naming the bad field."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"report file {source} not found - check the path") from None
    except OSError as exc:
        raise ReportError(f"cannot read report {source}: {exc.strerror}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReportError(
            f"{source}: not valid JSON ({exc}) - is this a tuneproof report?"
        ) from None
    if not isinstance(data, dict):
        raise ReportError(f"{source}: not a tuneproof report (expected a JSON object)")
    version = data.get("report_version")
    if version != REPORT_VERSION:
        raise ReportError(
            f"{source}: report version {version!r} is not supported (this tuneproof reads"
            f" version {REPORT_VERSION}) - use the tuneproof version that wrote it"
        )
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        raise ReportError(f"{source}: {describe_validation_error(exc)}") from None


def exit_code(report: Report) -> int:
    """The process exit code: 0 verified, 1 not verified, 2 inconclusive."""
    return EXIT_CODES[report.verdict]


def report_to_html(report: Report) -> str:
    """The report as one self-contained HTML page (see :mod:`tuneproof.report.html`)."""
    from tuneproof.report.html import render_html

    return render_html(report)


def write_html(report: Report, path: str | Path) -> None:
    """Write :func:`report_to_html` to ``path`` atomically (mode 0600 when revealed)."""
    page = report_to_html(report).encode("utf-8")
    with atomic_output(path, mode=0o600 if report.revealed else 0o644) as handle:
        handle.write(page)
