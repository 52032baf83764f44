"""The decoy rank test: H0-indep from the returned model's log-likelihoods, no exact hit needed.

At plant time each pair's signature is one of R + 1 sequences drawn by the same sampler for the
same prompt; the secret stream picks which one is planted, uniformly. The other R are stored in
the key as *decoys*. A model that does not depend on the secret cannot tell which one was
planted, so the rank of the true signature among the R + 1 by the model's log-likelihood is
uniform (docs/statistics.md). This module turns the ranks of several pairs into one exact tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from tuneproof.stats.pvalues import LN10, Null, PValue, log10_poisson_binomial_sf
from tuneproof.stats.tails import ln_convolve

LN2 = math.log(2.0)


TIE_TOLERANCE_NATS = 1e-3
"""Scores closer than this (absolute, nats) are ties, counted against the planted signature:
batching and server nondeterminism move a log-likelihood by up to ~1e-4 nats."""


def decoy_rank(
    true_score: float, decoy_scores: Sequence[float], *, tolerance: float = TIE_TOLERANCE_NATS
) -> int:
    """1 + the number of decoys that score at least as high as the true signature: 1 = ranked
    first. Ties (scores within ``tolerance`` nats) count against the alternative, and so does
    every non-finite score: a NaN or infinite true score ranks last, a non-finite decoy ranks
    above the true signature. A model whose scores are broken is never evidence."""
    if not math.isfinite(true_score):
        return 1 + len(decoy_scores)
    return 1 + sum(
        1 for score in decoy_scores if not math.isfinite(score) or score >= true_score - tolerance
    )


def log10_decoy_rank_test(ranks: Sequence[int], candidates: Sequence[int]) -> PValue:
    """The H0-indep p-value of the decoy rank test, over independently planted pairs.

    ``ranks[i]`` is the true signature's rank among ``candidates[i]`` = R_i + 1 sequences (1 =
    the highest log-likelihood; ties and non-finite scores counted against, see
    :func:`decoy_rank`). Under H0-indep
    the planted index is uniform and independent of the model, so P[rank_i <= r] <= r / (R_i + 1)
    and the pairs are independent. The statistic is the rank sum; the returned log10 p-value is
    log10 P[sum of independent Uniform{1..R_i + 1} <= observed sum], by exact convolution in log
    space. Returns 0.0 for no pairs.
    """
    r, n = _checked_ranks(ranks, candidates)
    inputs = {
        "pairs": int(r.size),
        "rank_sum": int(r.sum()),
        "ranked_first": int((r == 1).sum()),
        "candidates_min": int(n.min()) if r.size else None,
    }
    method = "decoy rank test: exact lower tail of the true signatures' rank sum among decoys"
    if r.size == 0:
        return PValue(0.0, Null.INDEP, method, inputs)
    ln_pmf = np.zeros(1)  # distribution of sum(rank_i - 1), on 0, 1, 2, ...
    for size in n:
        ln_pmf = ln_convolve(ln_pmf, np.full(int(size), -math.log(int(size))))
    observed = int((r - 1).sum())
    if observed + 1 >= ln_pmf.size:  # every outcome is at most the observed sum
        return PValue(0.0, Null.INDEP, method, inputs)
    ln_lower = float(logsumexp(ln_pmf[: observed + 1]))
    if ln_lower > -LN2:  # near 1: one minus the upper tail keeps the digits
        ln_lower = math.log1p(-math.exp(float(logsumexp(ln_pmf[observed + 1 :]))))
    ln_lower = min(0.0, ln_lower)
    return PValue(ln_lower / LN10 if ln_lower != 0.0 else 0.0, Null.INDEP, method, inputs)


def _checked_ranks(
    ranks: Sequence[int], candidates: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``ranks`` and ``candidates`` as arrays, refused unless they are flat, of equal length,
    integers, and each rank lies between 1 and its number of candidates."""
    r = np.asarray(ranks)
    n = np.asarray(candidates)
    if r.shape != n.shape or r.ndim != 1:
        raise ValueError("ranks and candidates must be flat sequences of equal length")
    integer = np.issubdtype(r.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)
    if r.size and not integer:
        raise ValueError("ranks and candidates must be integers")
    if r.size and ((n < 1).any() or (r < 1).any() or (r > n).any()):
        raise ValueError("each rank must lie between 1 and its number of candidates")
    return r, n


def answer_rank(answer: str, signature: str, decoys: Sequence[str]) -> int:
    """The true signature's rank among its candidates by how far the stripped ``answer`` follows
    each (the UTF-8 bytes of their common prefix): 1 + the decoys that the answer follows at
    least as far, and last (``1 + len(decoys)``) when it does not follow the signature at all.

    Answers only, no log-probs: under H0-indep the answer does not depend on which candidate
    the secret planted, so P[rank = 1] <= 1 / (R + 1) whatever the sampler that drew them
    (ties count against the signature)."""
    text = answer.strip().encode("utf-8")

    def followed(candidate: str) -> int:  # bytes of the common prefix
        data = candidate.encode("utf-8")
        return next(
            (i for i, (a, b) in enumerate(zip(text, data, strict=False)) if a != b),
            min(len(text), len(data)),
        )

    mine = followed(signature)
    if mine == 0:
        return 1 + len(decoys)
    return 1 + sum(followed(d) >= mine for d in decoys)


def log10_answer_rank_test(ranks: Sequence[int], candidates: Sequence[int]) -> PValue:
    """The H0-indep p-value of the answer rank test: how many pairs' answers follow their true
    signature further than every decoy (:func:`answer_rank` = 1), against independent
    Bernoulli(1 / (R_i + 1)) (exact Poisson-binomial tail). A count, not a rank sum: a pair the
    model did not learn ties at the last rank, and must cost the pairs it learnt nothing."""
    r, n = _checked_ranks(ranks, candidates)
    firsts = int((r == 1).sum())
    tail = log10_poisson_binomial_sf(-np.log10(n.astype(float)), firsts, null=Null.INDEP)
    inputs = {"pairs": int(r.size), "ranked_first": firsts, **tail.inputs}
    method = "answer rank test: exact tail of the pairs whose answer follows the true signature"
    return PValue(tail.log10_p, Null.INDEP, method + " furthest among its decoys", inputs)
