"""The tests a verification runs on its answered queries, the plan that fixes them before the
first answer, and the verdict they give.

Soundness rests on three rules (docs/statistics.md, "Which test may decide a verdict"):

- **A test decides only if its p-value is valid for how the answers were obtained.** Answers
  are greedy, so H0-base (the base model *sampling* the signature) is reported for parity
  with vTune but never decides, and takes no share of alpha.
- **The plan is fixed from the key and the backend before any answer is seen.** It names the
  tests that can run, their smallest attainable p-values (*floors*) and the number of looks.
  Only tests whose floor is below their share of alpha count in the Bonferroni split: a test
  that can never reject would waste alpha. Every look, the last included, is judged at
  ``alpha / (counted tests x looks)``, so a sequential run decides exactly as a one-shot run
  with the same answers would.
- **Non-finite scores are never evidence** (see :func:`~tuneproof.stats.decoy_rank`,
  :func:`~tuneproof.stats.log10_rank_sum_test` and :func:`base_log10_probs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from tuneproof.backends.base import VerifiableModel
from tuneproof.key import SignaturePair
from tuneproof.stats import (
    Null,
    PValue,
    decoy_rank,
    log10_answer_rank_test,
    log10_decoy_rank_test,
    log10_fisher_exact,
    log10_model_free_bound,
    log10_poisson_binomial_sf,
    log10_prefix_bound,
    log10_rank_sum_floor,
    log10_rank_sum_test,
)
from tuneproof.types import QueryKind, Verdict
from tuneproof.verification.answers import Answered, unanswered
from tuneproof.verification.queries import Chat, Query
from tuneproof.verification.result import TestOutcome

DEFAULT_ALPHA = 1e-6
MAX_FAILED_SHARE = 0.2
LN10 = math.log(10)


class TestName(StrEnum):
    """The tests a verification can run (several share one null)."""

    __test__ = False  # not a pytest test class

    EXACT_HITS = "exact hits"
    PREFIX = "prefix"
    DECOY_RANK = "decoy rank"
    ANSWER_RANK = "answer rank"
    BASE = "base probability"
    FISHER = "Fisher"
    RANK_SUM = "rank sum"


ANSWER_ONLY = frozenset({TestName.EXACT_HITS, TestName.PREFIX, TestName.ANSWER_RANK})
"""Tests that need only the planted answers: the ones a sequential look can run."""


@dataclass(frozen=True)
class PlannedTest:
    """One test of the plan: its null, its floor, and whether it counts (may decide)."""

    name: TestName
    null: Null
    log10_floor: float
    counts: bool = True
    note: str | None = None  # why it does not count, in words


@dataclass(frozen=True)
class VerificationPlan:
    """What a verification will test, fixed before the first answer.

    ``per_test_alpha`` = alpha / (counted tests x looks): the level every counted test is
    judged at, at every look (a union bound over tests and looks keeps P[false verified] <=
    alpha). ``correction`` = counted tests x looks: the factor the headline p-value is
    multiplied by."""

    alpha: float
    looks: int
    tests: tuple[PlannedTest, ...]

    @property
    def counted(self) -> list[PlannedTest]:
        return [t for t in self.tests if t.counts]

    @property
    def correction(self) -> int:
        return max(1, len(self.counted)) * self.looks

    @property
    def per_test_alpha(self) -> float:
        return self.alpha / self.correction

    def get(self, name: TestName) -> PlannedTest | None:
        return next((t for t in self.tests if t.name is name), None)

    def unreachable(self) -> list[PlannedTest]:
        """Tests that can run but never reach their share of alpha (they do not count)."""
        return [t for t in self.tests if not t.counts and t.null is not Null.BASE]


def first_placements(queries: Sequence[Answered]) -> list[Answered]:
    """Each planted pair's replica-0 query: the prompt its trigger and signature were drawn
    for, the planted side of the H0-controls tests (controls are drawn the same way)."""
    return [q for q in queries if q.kind is QueryKind.PLANTED and q.replica == 0]


def plan_verification(
    queries: Sequence[Query | Answered],
    *,
    alpha: float,
    looks: int = 1,
    logprobs: bool = True,
    base_logprobs: bool = False,
) -> VerificationPlan:
    """The plan for these (not yet answered) ``queries``: every test the key and the backend
    allow (``logprobs``: the verified model can score; ``base_logprobs``: a base model was
    given), with its floor; a test counts only if its floor is below alpha / (counted x looks),
    found by dropping the unreachable ones until the set is stable."""
    asked = unanswered(queries)
    planted = [q for q in asked if q.kind is QueryKind.PLANTED]
    controls = [q for q in asked if q.kind is QueryKind.CONTROL]
    first = first_placements(planted)
    tests: list[PlannedTest] = []
    if planted:
        ranked = _ranked_pairs(planted)
        candidates = [len(p.decoys) + 1 for p in ranked]
        if _bounded(planted):
            tests.append(
                PlannedTest(
                    TestName.EXACT_HITS, Null.INDEP, _exact_hits(planted, best_case=True).log10_p
                )
            )
            if all(q.pair.token_ends is not None for q in planted):
                best = prefix_test(planted, best_case=True)
                assert best is not None
                tests.append(PlannedTest(TestName.PREFIX, Null.INDEP, best.log10_p))
        elif ranked:
            all_first = log10_answer_rank_test([1] * len(ranked), candidates).log10_p
            tests.append(PlannedTest(TestName.ANSWER_RANK, Null.INDEP, all_first))
        if logprobs and ranked:
            all_first = log10_decoy_rank_test([1] * len(ranked), candidates).log10_p
            tests.append(PlannedTest(TestName.DECOY_RANK, Null.INDEP, all_first))
        if base_logprobs:
            tests.append(
                PlannedTest(
                    TestName.BASE,
                    Null.BASE,
                    -math.inf,
                    counts=False,
                    note=(
                        "reported for parity with vTune, never deciding: the answers are greedy,"
                        " and a greedy answer is not a sample from the base model"
                    ),
                )
            )
    if first and controls:
        fisher = log10_fisher_exact(len(first), len(first), 0, len(controls)).log10_p
        tests.append(PlannedTest(TestName.FISHER, Null.CONTROLS, fisher))
        if logprobs:
            separated = log10_rank_sum_floor(len(first), len(controls))
            tests.append(PlannedTest(TestName.RANK_SUM, Null.CONTROLS, separated))
    while True:
        plan = VerificationPlan(alpha, max(1, looks), tuple(tests))
        level = math.log10(plan.per_test_alpha)
        dropped = [t for t in plan.counted if t.log10_floor >= level]
        if not dropped:
            return plan
        tests = [
            replace(
                t,
                counts=False,
                note=(
                    f"cannot decide: its smallest attainable p-value, 10^{t.log10_floor:.2f}"
                    " with this key and these queries, is not below its share of alpha"
                ),
            )
            if t in dropped
            else t
            for t in tests
        ]


def _bounded(planted: Sequence[Answered]) -> bool:
    """Whether the exact-hit and prefix bounds hold: no pair's signature is natural (a key's
    pairs are all drawn by one sampler; a mix runs neither test)."""
    return not any(q.pair.natural for q in planted)


def _ranked_pairs(planted: Sequence[Answered]) -> list[SignaturePair]:
    pairs: dict[int, SignaturePair] = {}
    for q in planted:
        if q.pair.decoys:
            pairs.setdefault(q.pair.pair_id, q.pair)
    return list(pairs.values())


def base_log10_probs(values: Sequence[float]) -> list[float]:
    """H0-base's per-pair log10 probabilities from base-model log-likelihoods (nats): a
    non-finite score (NaN, -inf from a broken export) counts as probability 1, never as
    evidence."""
    return [min(0.0, v / LN10) if math.isfinite(v) else 0.0 for v in values]


def run_tests(
    queries: Sequence[Answered], plan: VerificationPlan, *, answers_only: bool = False
) -> list[TestOutcome]:
    """Run the plan's tests that the answered queries allow (``answers_only``: only those
    that need no log-probs, for a sequential look). Counted tests are judged at the plan's
    ``per_test_alpha``; the others are reported and never reject."""
    planted = [q for q in queries if q.kind is QueryKind.PLANTED and q.answer is not None]
    controls = [q for q in queries if q.kind is QueryKind.CONTROL and q.answer is not None]
    first = first_placements(planted)
    results: list[tuple[TestName, PValue]] = []
    if planted:
        if _bounded(planted):
            results.append((TestName.EXACT_HITS, _exact_hits(planted)))
            prefix = prefix_test(planted)
            if prefix is not None:
                results.append((TestName.PREFIX, prefix))
        else:
            followed = [q for q in first if q.answer_rank is not None]
            if followed:
                ranks = [int(q.answer_rank or 1) for q in followed]
                sizes = [len(q.pair.decoys) + 1 for q in followed]
                results.append((TestName.ANSWER_RANK, log10_answer_rank_test(ranks, sizes)))
        ranked = [q for q in planted if q.decoy_rank is not None]
        if ranked and not answers_only:
            ranks = [int(q.decoy_rank or 1) for q in ranked]
            sizes = [len(q.pair.decoys) + 1 for q in ranked]
            results.append((TestName.DECOY_RANK, log10_decoy_rank_test(ranks, sizes)))
    with_base = [q for q in planted if q.base_logprob is not None]
    if planted and len(with_base) == len(planted) and not answers_only:
        log10_probs = base_log10_probs([float(q.base_logprob or 0.0) for q in with_base])
        hits = sum(bool(q.hit) for q in with_base)
        results.append((TestName.BASE, log10_poisson_binomial_sf(log10_probs, hits)))
    if first and controls and not answers_only:
        results.append(
            (
                TestName.FISHER,
                log10_fisher_exact(
                    sum(bool(q.hit) for q in first),
                    len(first),
                    sum(bool(q.hit) for q in controls),
                    len(controls),
                ),
            )
        )
        if all(q.logprob is not None for q in [*first, *controls]):
            results.append(
                (
                    TestName.RANK_SUM,
                    log10_rank_sum_test(
                        [float(q.logprob) for q in first if q.logprob is not None],
                        [float(q.logprob) for q in controls if q.logprob is not None],
                    ),
                )
            )
    return [_judge(name, pvalue, plan) for name, pvalue in results]


def _judge(name: TestName, pvalue: PValue, plan: VerificationPlan) -> TestOutcome:
    planned = plan.get(name)
    counts = planned is not None and planned.counts
    return TestOutcome.from_pvalue(
        pvalue,
        plan.per_test_alpha,
        decides=counts,
        note=None if planned is None else planned.note,
        log10_floor=None if planned is None else planned.log10_floor,
    )


def _exact_hits(planted: Sequence[Answered], *, best_case: bool = False) -> PValue:
    """The exact-hit bound over the answered planted queries; ``best_case`` gives the floor:
    every answer is the bare signature (one start position)."""
    return log10_model_free_bound(
        bits=[q.pair.bits for q in planted],
        answer_lengths=[q.pair.m if best_case else len((q.answer or "").strip()) for q in planted],
        hits=[True if best_case else bool(q.hit) for q in planted],
        groups=[q.pair.pair_id for q in planted],
        min_signature_chars=[q.pair.m for q in planted],
    )


def prefix_test(planted: Sequence[Answered], *, best_case: bool = False) -> PValue | None:
    """The prefix test over the answered planted queries: per pair, the longest matched prefix
    among its answers with a union bound over them; None when the key lacks token boundaries.
    ``best_case`` gives the floor: every pair matched in full."""
    if not planted or any(q.pair.token_ends is None for q in planted):
        return None
    best: dict[int, int] = {}
    asked: dict[int, int] = {}
    pairs: dict[int, SignaturePair] = {}
    for q in planted:
        pid = q.pair.pair_id
        matched = q.pair.m if best_case else (q.matched or 0)
        best[pid] = max(best.get(pid, 0), matched)
        asked[pid] = asked.get(pid, 0) + 1
        pairs[pid] = q.pair
    return log10_prefix_bound(
        [best[pid] for pid in pairs],
        [pairs[pid].k for pid in pairs],
        [pairs[pid].m for pid in pairs],
        [asked[pid] for pid in pairs],
    )


def rank_decoys(
    answers: Sequence[Answered], model: VerifiableModel, batch_size: int = 8
) -> tuple[list[Answered], int]:
    """Score each planted pair's true signature and its decoys on the pair's first answered
    planted prompt with ``model``'s log-likelihood; return the answers with that one's
    ``decoy_rank`` set, and how many scores were not finite.

    The candidates are scored in an order that does not depend on which of them was planted
    (sorted by text), so that batching and server nondeterminism treat the planted one exactly
    like its decoys; ties within the tolerance and non-finite scores count against it."""
    first: dict[int, int] = {}
    for at, q in enumerate(answers):
        if q.kind is QueryKind.PLANTED and q.answer is not None and q.pair.decoys:
            first.setdefault(q.pair.pair_id, at)
    ranked = list(answers)
    if not first:
        return ranked, 0
    chats: list[Chat] = []
    texts: list[str] = []
    orders: list[list[int]] = []
    for index in first.values():
        q = answers[index]
        candidates = [q.pair.signature, *q.pair.decoys]
        order = sorted(range(len(candidates)), key=candidates.__getitem__)
        orders.append(order)
        chats += [q.chat] * len(candidates)
        texts += [candidates[i] for i in order]
    scores = model.logprob(chats, texts, batch_size)
    at = 0
    for index, order in zip(first.values(), orders, strict=True):
        by_candidate = {i: scores[at + slot] for slot, i in enumerate(order)}
        rank = decoy_rank(by_candidate[0], [by_candidate[i] for i in order if i != 0])
        ranked[index] = replace(answers[index], decoy_rank=rank)
        at += len(order)
    return ranked, sum(not math.isfinite(score) for score in scores)


def decide(
    tests: Sequence[TestOutcome], queries: Sequence[Answered], plan: VerificationPlan
) -> tuple[Verdict, Null | None]:
    """The verdict: inconclusive when too many queries failed or when no test of the plan can
    reach alpha; otherwise verified when a counted test rejects at the plan's per-test alpha,
    naming that test's null (the one with the smallest p-value)."""
    failed = sum(q.answer is None for q in queries)
    planted = [q for q in queries if q.kind is QueryKind.PLANTED]
    if (
        not tests
        or not plan.counted
        or failed > MAX_FAILED_SHARE * len(queries)
        or all(q.answer is None for q in planted)
    ):
        return Verdict.INCONCLUSIVE, None
    rejected = [t for t in tests if t.rejects and t.decides]
    if rejected:
        return Verdict.VERIFIED, min(rejected, key=lambda t: t.log10_p).null
    return Verdict.NOT_VERIFIED, None


def corrected_log10_p(tests: Sequence[TestOutcome], plan: VerificationPlan) -> float | None:
    """The headline p-value: the smallest p among the deciding tests times the plan's
    correction (counted tests x looks), capped at 1; None when no deciding test ran. It is
    below alpha exactly when the verdict's Bonferroni rule rejects."""
    deciding = [t.log10_p for t in tests if t.decides]
    if not deciding:
        return None
    return min(0.0, min(deciding) + math.log10(plan.correction))
