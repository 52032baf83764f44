"""The tests a verification runs on its answered queries, and the verdict they give."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tuneproof.key import SignaturePair
from tuneproof.queries import Chat, Query, VerifiableModel
from tuneproof.report import QueryKind, TestOutcome, Verdict
from tuneproof.stats import (
    Null,
    PValue,
    decoy_rank,
    log10_decoy_rank_test,
    log10_fisher_exact,
    log10_model_free_bound,
    log10_permutation_test,
    log10_poisson_binomial_sf,
    log10_prefix_bound,
)

MAX_FAILED_SHARE = 0.2
LN10 = math.log(10)


def run_tests(queries: Sequence[Query], alpha: float) -> list[TestOutcome]:
    """Every test that the answered queries and available log-probs allow, H0-indep first.

    Each test is judged at ``alpha / number of tests`` (Bonferroni), so that reporting several
    tests never inflates the chance of a false "verified"."""
    planted = [q for q in queries if q.kind is QueryKind.PLANTED and q.answer is not None]
    controls = [q for q in queries if q.kind is QueryKind.CONTROL and q.answer is not None]
    pvalues: list[PValue] = []
    if planted:
        indep = log10_model_free_bound(
            bits=[q.pair.bits for q in planted],
            answer_lengths=[len(q.answer.strip()) for q in planted if q.answer is not None],
            hits=[bool(q.hit) for q in planted],
            groups=[q.pair.pair_id for q in planted],
            min_signature_chars=[q.pair.m for q in planted],
        )
        pvalues.append(indep)
        prefix = prefix_test(planted)
        if prefix is not None:
            pvalues.append(prefix)
        ranked = [q for q in planted if q.decoy_rank is not None]
        if ranked:
            pvalues.append(
                log10_decoy_rank_test(
                    [int(q.decoy_rank or 1) for q in ranked],
                    [len(q.pair.decoys) + 1 for q in ranked],
                )
            )
    with_base = [q for q in planted if q.base_logprob is not None]
    if planted and len(with_base) == len(planted):
        base = log10_poisson_binomial_sf(
            [min(0.0, q.base_logprob / LN10) for q in with_base if q.base_logprob is not None],
            sum(bool(q.hit) for q in with_base),
        )
        pvalues.append(base)
    first = [q for q in planted if q.replica == 0]
    if first and controls:
        fisher = log10_fisher_exact(
            sum(bool(q.hit) for q in first),
            len(first),
            sum(bool(q.hit) for q in controls),
            len(controls),
        )
        pvalues.append(fisher)
        if all(q.logprob is not None for q in [*first, *controls]):
            perm = log10_permutation_test(
                [float(q.logprob or 0.0) for q in first],
                [float(q.logprob or 0.0) for q in controls],
            )
            pvalues.append(perm)
    per_test = alpha / max(1, len(pvalues))
    return [TestOutcome.from_pvalue(pvalue, per_test) for pvalue in pvalues]


def prefix_test(planted: Sequence[Query]) -> PValue | None:
    """The prefix test over the answered planted queries: per pair, the longest matched prefix
    among its answers with a union bound over them; None when the key lacks token boundaries."""
    if not planted or any(q.pair.token_ends is None for q in planted):
        return None
    best: dict[int, int] = {}
    asked: dict[int, int] = {}
    pairs: dict[int, SignaturePair] = {}
    for q in planted:
        pid = q.pair.pair_id
        best[pid] = max(best.get(pid, 0), q.matched or 0)
        asked[pid] = asked.get(pid, 0) + 1
        pairs[pid] = q.pair
    return log10_prefix_bound(
        [best[pid] for pid in pairs],
        [pairs[pid].k for pid in pairs],
        [pairs[pid].m for pid in pairs],
        [asked[pid] for pid in pairs],
    )


def rank_decoys(queries: Sequence[Query], model: VerifiableModel, batch_size: int = 8) -> None:
    """Score each planted pair's true signature and its decoys on the pair's first answered
    planted prompt with ``model``'s log-likelihood; set that query's ``decoy_rank``."""
    first: dict[int, Query] = {}
    for q in queries:
        if q.kind is QueryKind.PLANTED and q.answer is not None and q.pair.decoys:
            first.setdefault(q.pair.pair_id, q)
    if not first:
        return
    chats: list[Chat] = []
    texts: list[str] = []
    for q in first.values():
        candidates = [q.pair.signature, *q.pair.decoys]
        chats += [q.chat] * len(candidates)
        texts += candidates
    scores = model.logprob(chats, texts, batch_size)
    at = 0
    for q in first.values():
        size = len(q.pair.decoys) + 1
        q.decoy_rank = decoy_rank(scores[at], scores[at + 1 : at + size])
        at += size


def decide(
    tests: Sequence[TestOutcome], queries: Sequence[Query], alpha: float
) -> tuple[Verdict, Null | None]:
    """The verdict: inconclusive when too many queries failed; otherwise verified when the
    smallest p-value is below ``alpha / len(tests)`` (Bonferroni), naming that null."""
    failed = sum(q.answer is None for q in queries)
    planted = [q for q in queries if q.kind is QueryKind.PLANTED]
    if (
        not tests
        or failed > MAX_FAILED_SHARE * len(queries)
        or all(q.answer is None for q in planted)
    ):
        return Verdict.INCONCLUSIVE, None
    rejected = [t for t in tests if t.rejects]
    if rejected:
        return Verdict.VERIFIED, min(rejected, key=lambda t: t.log10_p).null
    return Verdict.NOT_VERIFIED, None
