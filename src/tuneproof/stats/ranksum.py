"""The exact one-sided Wilcoxon-Mann-Whitney rank-sum test for H0-controls, in log10 space.

The statistic counts the (planted, held-out) pairs in which the planted score is clearly higher.
Its exact null distribution is that of the Mann-Whitney U for distinct values: the coefficients
of the Gaussian binomial [m + n choose m]_q, i.e. the numbers of r-subsets of {1..N} by rank sum
minus r(r + 1) / 2. Unlike the Monte-Carlo permutation test its smallest p-value is
1 / C(N, r) (about 1e-11 for 20 + 20 pairs), so few pairs can carry strong evidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.stats.pvalues import LN10, Null, PValue, _count, monte_carlo_pvalue
from tuneproof.stats.tails import FloatArray

MAX_EXACT_PAIRS = 200_000
"""The exact path runs when n_planted * n_held_out is at most this (the null distribution up to
U = mn / 2 in at most ~0.5 s, cached per (n_planted, n_held_out); C(N, r) < 1e270 fits a double).
Above it the test is a Monte-Carlo permutation test of the same statistic."""


@lru_cache(maxsize=16)
def _null_cdf_counts(m: int, n: int) -> FloatArray:
    """#{r-subsets with U <= u} for u = 0..floor(mn / 2), as float64 (exact below 2^53).

    Harding's algorithm (1984): [n + r choose r]_q = prod_{i <= r} (1 - q^(n+i)) / (1 - q^i),
    one factor pair at a time, truncated at degree mn / 2; after each pair the polynomial is
    [n + i choose i]_q, whose coefficients are nonnegative counts. Only the lower half is kept
    (U is symmetric about mn / 2). Rounding noise is kept, not clipped at 0: it cancels in later
    steps. Measured against exact integers up to 447 + 447 (the size limit): relative error of
    the cumulative counts below 1e-14 where they are below 1e-6 of C(N, r), below 2e-11 below
    1%, and below 4e-8 anywhere (near the centre, where p is about 1/2).
    """
    r, n = min(m, n), max(m, n)
    top = r * n // 2
    c = np.zeros(top + 1)
    c[0] = 1.0
    for i in range(1, r + 1):
        width = -(-(top + 1) // i) * i  # divide by (1 - q^i): cumulative sums with stride i
        padded = np.zeros(width)
        padded[: top + 1] = c
        c = np.cumsum(padded.reshape(-1, i), axis=0).ravel()[: top + 1]
        shift = n + i  # multiply by (1 - q^(n+i))
        if shift <= top:
            c[shift:] = c[shift:] - c[: top + 1 - shift]
    out = np.cumsum(c)
    out.flags.writeable = False
    return out


def _u_against(
    finite_values: FloatArray, planted: npt.NDArray[np.bool_], tolerance: float
) -> npt.NDArray[np.int64]:
    """U for each row of ``planted`` (labels of the finite scores, sorted ascending): the number
    of (planted i, held-out j) with y_j < x_i - tolerance. Non-finite scores are left out: they
    never count for the alternative."""
    below = np.searchsorted(finite_values, finite_values - tolerance, side="left")
    held_before = np.zeros((planted.shape[0], planted.shape[1] + 1), dtype=np.int64)
    np.cumsum(~planted, axis=1, out=held_before[:, 1:])
    out: npt.NDArray[np.int64] = (held_before[:, below] * planted).sum(axis=1)
    return out


def _exact(r: int, n: int, max_exact_pairs: int) -> bool:
    return r * n <= max_exact_pairs and math.comb(r + n, r) < 10**300


def _sizes(n_planted: int, n_held_out: int) -> tuple[int, int]:
    r, n = _count(n_planted, "n_planted"), _count(n_held_out, "n_held_out")
    if r == 0 or n == 0:
        raise ValueError("the rank-sum test needs at least one planted and one held-out score")
    return r, n


def log10_rank_sum_floor(
    n_planted: int,
    n_held_out: int,
    *,
    max_exact_pairs: int = MAX_EXACT_PAIRS,
    n_resamples: int = 99_999,
) -> float:
    """log10 of the smallest p-value :func:`log10_rank_sum_test` can return for these sizes:
    -log10 C(n_planted + n_held_out, n_planted) on the exact path (complete separation), else
    -log10(B + 1) for the Monte-Carlo path. It depends on the sizes only, so it can decide
    before any answer whether the test could reach a threshold."""
    r, n = _sizes(n_planted, n_held_out)
    if _exact(r, n, max_exact_pairs):
        return -math.log10(math.comb(r + n, r))
    return -math.log10(_count(n_resamples, "n_resamples") + 1)


def log10_rank_sum_test(
    planted_scores: Sequence[float] | FloatArray,
    held_out_scores: Sequence[float] | FloatArray,
    *,
    tie_tolerance: float = 1e-3,
    max_exact_pairs: int = MAX_EXACT_PAIRS,
    n_resamples: int = 99_999,
    seed: int | None = 0,
) -> PValue:
    """One-sided exact Wilcoxon-Mann-Whitney test that planted pairs score higher than held-out.

    The statistic is U = #{(i, j): x_i > y_j + ``tie_tolerance``} over planted scores x and
    held-out scores y (absolute tolerance, e.g. nats; computed as y_j < x_i - tolerance, which
    implies x_i > y_j in floating point too): ties count against the alternative. Every
    non-finite score counts against it too: a planted NaN or infinity loses every comparison, a
    held-out one wins every comparison (so NaN against NaN counts against).

    Validity: under H0-controls the scores are exchangeable, so given the pooled values the
    planted set is a uniformly random r-subset. Fix any strict order of the N pooled items that
    ignores the labels and agrees with the finite scores (ties broken by position, non-finite
    items placed anywhere). Its Mann-Whitney count U* has the exact distribution above, and every
    pair counted in U (both finite, x_i > y_j + tolerance) is counted in U*, so U <= U* for every
    labelling. Hence P[U >= u] <= P_MW[U* >= u], and p = P_MW[U* >= u_obs] is valid
    (conservative with ties or non-finite scores, exact without them).

    When n_planted * n_held_out <= ``max_exact_pairs``, returns log10 P_MW[U* >= u_obs] from the
    exact counts (relative error below 2e-11 for p < 0.01, see :func:`_null_cdf_counts`), never
    below ``log10_resolution`` = -log10 C(N, r). Otherwise draws ``n_resamples`` = B random
    labellings (numpy PCG64 seeded with ``seed``) and returns log10 (1 + #{U_perm >= u_obs}) /
    (B + 1), a valid permutation p-value of the same U with resolution 1 / (B + 1). Raises
    ``ValueError`` when either side is empty.
    """
    x = np.asarray(planted_scores, dtype=np.float64).ravel()
    y = np.asarray(held_out_scores, dtype=np.float64).ravel()
    r, n = _sizes(x.size, y.size)
    tolerance = float(tie_tolerance)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tie_tolerance must be finite and >= 0, got {tie_tolerance!r}")
    pooled = np.concatenate([x, y])
    labels = np.arange(r + n) < r
    finite = np.isfinite(pooled)
    order = np.flatnonzero(finite)[np.argsort(pooled[finite], kind="stable")]
    values = pooled[order]
    u_obs = int(_u_against(values, labels[order][None, :], tolerance)[0])
    mn = r * n
    inputs: dict[str, Any] = {
        "n_planted": r,
        "n_held_out": n,
        "u": u_obs,
        "u_max": mn,
        "auc": u_obs / mn,
        "non_finite": int((~finite).sum()),
        "non_finite_planted": int((~finite[:r]).sum()),
        "tie_tolerance": tolerance,
    }
    log10_arrangements = math.log10(math.comb(r + n, r))
    inputs["log10_arrangements"] = log10_arrangements
    if _exact(r, n, max_exact_pairs):
        counts = _null_cdf_counts(min(r, n), max(r, n))
        if u_obs == 0:
            value = 0.0
        elif mn - u_obs < u_obs:  # upper tail P[U >= u] = P[U <= mn - u], summed directly
            value = math.log10(float(counts[mn - u_obs])) - log10_arrangements
        else:  # u <= mn / 2, so p >= 1/2: one minus the lower tail P[U <= u - 1]
            lower = float(counts[u_obs - 1]) / float(math.comb(r + n, r))
            value = math.log1p(-lower) / LN10  # lower <= 1/2 by symmetry
        return PValue(
            min(0.0, max(value, -log10_arrangements)),
            Null.CONTROLS,
            "exact one-sided Wilcoxon-Mann-Whitney rank-sum test (ties count against)",
            inputs,
            log10_resolution=-log10_arrangements,
        )
    b = _count(n_resamples, "n_resamples")
    if b < 1:
        raise ValueError("n_resamples must be >= 1")
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // (r + n))
    count = 0
    for start in range(0, b, chunk):
        rows = min(chunk, b - start)
        perm = rng.permuted(np.broadcast_to(labels, (rows, r + n)), axis=1)
        count += int(np.count_nonzero(_u_against(values, perm[:, order], tolerance) >= u_obs))
    inputs.update({"resamples": b, "seed": seed})
    return monte_carlo_pvalue(count, b, "Monte-Carlo rank-sum permutation test", inputs)
