"""Exact tail probabilities in natural-log space: the numeric core of :mod:`tuneproof.stats`.

Every function takes and returns natural logarithms of probabilities and sums positive terms
with log-sum-exp, so nothing underflows and relative precision is kept in the far tails. When
a tail is above 1/2 it is computed as ``log1p(-other tail)``, which keeps full relative precision
as the value approaches 0 (p close to 1). The public, log10 API is in :mod:`.pvalues`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import gammainc, gammaln, logsumexp

LN2 = math.log(2.0)
FloatArray = npt.NDArray[np.float64]


def ln_complement(ln_p: FloatArray) -> FloatArray:
    """ln(1 - p) from ln p, accurate for p tiny (log1p) and for p close to 1 (expm1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        small = np.log1p(-np.exp(np.minimum(ln_p, -LN2)))
        large = np.log(-np.expm1(np.maximum(ln_p, -LN2)))
    out: FloatArray = np.where(ln_p < -LN2, small, large)
    return out


def choose_tail(ln_upper: float, ln_lower: float) -> float:
    """ln P[upper] given both ln P[upper] and ln P[lower] = ln(1 - P[upper]).

    Near 1, ``log1p(-P[lower])`` keeps full relative precision where the direct sum cannot.
    """
    if ln_upper > -LN2:
        return float(np.log1p(-np.exp(ln_lower))) if ln_lower > -np.inf else 0.0
    return float(ln_upper)


def pb_tail_ln(ln_p: FloatArray, k: int) -> float:
    """ln P[X >= k], X a sum of independent Bernoulli(exp(ln_p[i])).

    Exact dynamic programme over the counts below the threshold plus one absorbing state for
    "threshold reached"; it tracks failures instead of successes when k > n/2, so its cost is
    O(n * min(k, n - k + 1)).
    """
    n = len(ln_p)
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    ln_q = ln_complement(ln_p)
    upper_absorbed = k - 1 <= n - k
    # Track X = 0..k-1 (absorb X >= k), or failures Y = n - X = 0..n-k (absorb Y > n-k).
    states, step_up, step_stay = (k, ln_p, ln_q) if upper_absorbed else (n - k + 1, ln_q, ln_p)
    a = np.full(states, -np.inf)
    a[0] = 0.0
    absorbed = -math.inf
    for i in range(n):
        up, stay = step_up[i], step_stay[i]
        absorbed = float(np.logaddexp(absorbed, a[-1] + up))
        top = min(i + 2, states)  # counts above i are unreachable after i + 1 steps
        a[1:top] = np.logaddexp(a[1:top] + stay, a[: top - 1] + up)
        a[0] += stay
    kept = float(logsumexp(a))
    ln_upper, ln_lower = (absorbed, kept) if upper_absorbed else (kept, absorbed)
    return choose_tail(ln_upper, ln_lower)


def split_terms(terms: FloatArray, cut: int) -> float:
    """ln of sum(exp(terms[cut:])), via the complement when that sum is close to 1."""
    return choose_tail(float(logsumexp(terms[cut:])), float(logsumexp(terms[:cut])))


def ln_comb(n: int | FloatArray, k: int | FloatArray) -> FloatArray:
    out: FloatArray = gammaln(np.add(n, 1)) - gammaln(np.add(k, 1)) - gammaln(np.subtract(n, k) + 1)
    return out


def binomial_tail_ln(n: int, ln_p: float, k: int) -> float:
    """ln P[X >= k] for X ~ Binomial(n, exp(ln_p)), summing the exact terms in log space."""
    if k <= 0:
        return 0.0
    if k > n or ln_p == -math.inf:
        return -math.inf
    if ln_p == 0.0:
        return 0.0
    ln_q = float(ln_complement(np.array([ln_p]))[0])
    j = np.arange(n + 1, dtype=np.float64)
    terms = ln_comb(n, j) + j * ln_p + (n - j) * ln_q
    return split_terms(terms, k)


def hypergeom_tail_ln(total: int, successes: int, draws: int, x: int) -> float:
    """ln P[X >= x] for X ~ Hypergeometric(total, successes, draws)."""
    lo, hi = max(0, draws - (total - successes)), min(successes, draws)
    if x <= lo:
        return 0.0
    if x > hi:
        return -math.inf
    j = np.arange(lo, hi + 1, dtype=np.float64)
    terms = ln_comb(successes, j) + ln_comb(total - successes, draws - j) - ln_comb(total, draws)
    return split_terms(terms, x - lo)


def fisher_tail_ln(ln_pvalues: FloatArray) -> float:
    """ln P[chi2(2n) >= -2 sum ln p_i] = ln Q(n, s) with s = -sum ln p_i (closed form)."""
    n = len(ln_pvalues)
    s = -float(np.sum(ln_pvalues))
    if s == math.inf:
        return -math.inf
    if s <= 0.0:
        return 0.0
    j = np.arange(n, dtype=np.float64)
    ln_upper = -s + float(logsumexp(j * math.log(s) - gammaln(j + 1)))
    if ln_upper > -LN2:
        return float(np.log1p(-gammainc(n, s)))  # gammainc: regularised lower P(n, s)
    return ln_upper


def ln_convolve(a: FloatArray, b: FloatArray) -> FloatArray:
    """ln of the convolution of two probability mass functions on 0, 1, 2, ... given as ln
    probabilities (exact, in log space: nothing underflows)."""
    grid = a[:, None] + b[None, :]
    out = np.full(a.size + b.size - 1, -np.inf)
    for i in range(a.size):
        out[i : i + b.size] = np.logaddexp(out[i : i + b.size], grid[i])
    return out
