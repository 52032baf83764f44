"""The record of a verification: every test's outcome, every query's outcome, how the answers
were produced, and the verdict. A pydantic model with stable keys (the JSON report is this
record plus its plain-English claims: :class:`tuneproof.report.schema.Report`)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneproof import __version__
from tuneproof.stats import Null, PValue
from tuneproof.stats.phrases import explain, format_alpha, format_p
from tuneproof.types import ModelIdentity, QueryKind, Verdict, now_utc

# A log10 p-value this far above 0 is floating-point noise around p = 1 and is stored as 0.0.
_LOG10_P_SLACK = 1e-6


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
    answer_rank: int | None = Field(
        default=None,
        ge=1,
        description="rank of the true signature among its decoys by how far the answer follows"
        " each (1 = furthest; last when it does not follow the signature at all)",
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


class UnreachableTest(_Strict):
    """A test that could run but never reaches its share of alpha (it does not count)."""

    name: str
    null: Null
    note: str


class Untested(StrEnum):
    """Why a null has no test outcome (the report words it)."""

    NO_PLANTED = "no planted queries"
    PLANTED_FAILED = "every planted query failed"
    NO_CONTROLS = "the key has no controls"
    CONTROLS_FAILED = "every control query failed"
    NO_BASE_MODEL = "no base model"
    NO_BASE_LOGPROBS = "the base model gave no log-probs"


class Verification(_Strict):
    """What a verification measured (the report without its plain-English claims, which
    :func:`tuneproof.report.wording.build_report` adds). Version 1 of the report's keys."""

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
    commitment_checked: bool = Field(
        default=False,
        description="whether key_commitment was checked against the value published before"
        " training (verify --commitment) and matched; a key that does not match is refused",
    )
    key_integrity: bool | None = Field(
        default=None,
        description="whether the key carried an integrity check (checked when it was loaded);"
        " false for a key written by an earlier tuneproof; null in older reports",
    )
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
    results: list[QueryOutcome]
    secrets: dict[int, dict[str, str]] | None = Field(
        default=None, description="pair_id -> {'trigger', 'signature'}; only when revealed"
    )
    logprob_skipped: list[str] = Field(
        default_factory=list,
        description="why log-likelihood tests were skipped, one reason per backend",
    )
    non_finite_scores: int = Field(
        default=0,
        ge=0,
        description="log-likelihoods that were NaN or infinite (they count against the planted"
        " signatures, never for them)",
    )
    unreachable: list[UnreachableTest] = Field(
        default_factory=list,
        description="tests that could run but can never reach their share of alpha with this key",
    )
    untested: dict[Null, Untested] = Field(
        default_factory=dict,
        description="why each null without a test outcome was not tested (empty in older reports)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Verification:
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

    def commitment_note(self) -> str:
        """Whether ``key_commitment`` was checked against the published value, in words."""
        if self.commitment_checked:
            return "matches the published value"
        return "not checked against a published value (pass --commitment)"

    def key_integrity_note(self) -> str | None:
        """A warning for a key without an integrity check (None otherwise)."""
        if self.key_integrity is False:
            return (
                "the key carries no integrity check (written by an earlier tuneproof): an edit"
                " to it is caught only by comparing its commitment with the published one"
            )
        return None

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
