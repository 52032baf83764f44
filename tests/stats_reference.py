"""Independent references for the statistics tests: mpmath at 100 digits, exact integers, brute
force. Nothing here shares code with ``tuneproof.stats``.

Every reference computes both the upper tail and its complement directly (each as a sum of
positive terms), then returns log10 of the upper tail through ``log1p(-lower)`` when the upper
tail is above 1/2, so the reference stays exact when p is close to 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction

import mpmath as mp

DPS = 100
REL_TOL = 1e-9
ABS_TOL = 1e-300  # doubles cannot hold |log10 p| below ~1e-308; nothing else is excused


def _log10_from_tails(upper: mp.mpf, lower: mp.mpf) -> float:
    if upper == 0:
        return -math.inf
    if upper > 0.5:
        return float(mp.log1p(-lower) / mp.log(10))
    return float(mp.log10(upper))


def _prob(log10_p: float) -> tuple[mp.mpf, mp.mpf]:
    """(p, 1 - p), the latter via expm1 so that it stays exact when p is within 1e-100 of 1."""
    if log10_p == -math.inf:
        return mp.mpf(0), mp.mpf(1)
    x = mp.mpf(log10_p) * mp.log(10)
    return mp.exp(x), -mp.expm1(x)


def pb_bruteforce(log10_probs: Sequence[float], k: int) -> float:
    """log10 P[X >= k] by summing the probability of all 2^n outcomes."""
    with mp.workdps(DPS):
        ps = [_prob(v) for v in log10_probs]
        upper, lower = mp.mpf(0), mp.mpf(0)
        for outcome in itertools.product((0, 1), repeat=len(ps)):
            prob = mp.mpf(1)
            for bit, (p, q) in zip(outcome, ps, strict=True):
                prob *= p if bit else q
            if sum(outcome) >= k:
                upper += prob
            else:
                lower += prob
        return _log10_from_tails(upper, lower)


def pb_mp(log10_probs: Sequence[float], k: int) -> float:
    """log10 P[X >= k] by the full probability-mass dynamic programme in 100-digit arithmetic."""
    with mp.workdps(DPS):
        pmf = [mp.mpf(1)]
        for v in log10_probs:
            p, q = _prob(v)
            pmf = [
                (pmf[j] * q if j < len(pmf) else 0) + (pmf[j - 1] * p if j >= 1 else 0)
                for j in range(len(pmf) + 1)
            ]
        return _log10_from_tails(mp.fsum(pmf[max(k, 0) :]), mp.fsum(pmf[: max(k, 0)]))


def pb_mp_truncated(log10_probs: Sequence[float], k: int) -> float:
    """Like :func:`pb_mp` but keeps only the counts 0..k-1 and one "reached k" state, in
    100-digit arithmetic: O(n k), for large n and small k."""
    with mp.workdps(DPS):
        below = [mp.mpf(1)] + [mp.mpf(0)] * (k - 1)
        reached = mp.mpf(0)
        for v in log10_probs:
            p, q = _prob(v)
            reached += below[-1] * p
            below = [below[0] * q] + [below[j] * q + below[j - 1] * p for j in range(1, k)]
        return _log10_from_tails(reached, mp.fsum(below))


def binomial_mp(n: int, log10_p: float, k: int) -> float:
    """log10 P[Binomial(n, p) >= k] from the closed-form terms in 100-digit arithmetic."""
    with mp.workdps(DPS):
        p, q = _prob(log10_p)
        terms = [mp.binomial(n, j) * p**j * q ** (n - j) for j in range(n + 1)]
        return _log10_from_tails(mp.fsum(terms[max(k, 0) :]), mp.fsum(terms[: max(k, 0)]))


def hypergeom_exact(total: int, successes: int, draws: int, x: int) -> float:
    """log10 P[Hypergeometric >= x] from exact integer counts."""
    den = math.comb(total, draws)
    counts = [
        math.comb(successes, j) * math.comb(total - successes, draws - j) for j in range(draws + 1)
    ]
    upper = Fraction(sum(counts[max(x, 0) :]), den)
    lower = Fraction(sum(counts[: max(x, 0)]), den)
    with mp.workdps(DPS):
        up = mp.mpf(upper.numerator) / upper.denominator
        lo = mp.mpf(lower.numerator) / lower.denominator
        return _log10_from_tails(up, lo)


def fisher_combine_mp(log10_pvalues: Sequence[float]) -> float:
    """log10 P[chi2(2n) >= -2 sum ln p_i] with mpmath's regularised incomplete gamma."""
    with mp.workdps(DPS):
        n = len(log10_pvalues)
        if any(v == -math.inf for v in log10_pvalues):
            return -math.inf
        s = -mp.log(10) * mp.fsum(mp.mpf(v) for v in log10_pvalues)
        upper = mp.gammainc(n, s, mp.inf, regularized=True)
        lower = mp.gammainc(n, 0, s, regularized=True)
        return _log10_from_tails(upper, lower)


def permutation_bruteforce(planted: Sequence[float], held_out: Sequence[float]) -> tuple[int, int]:
    """(#splits whose planted sum >= observed, #splits), with exact rational sums."""
    pooled = [Fraction(v) for v in [*planted, *held_out]]
    observed = sum((Fraction(v) for v in planted), Fraction(0))
    count = total = 0
    for subset in itertools.combinations(range(len(pooled)), len(planted)):
        total += 1
        count += sum((pooled[i] for i in subset), Fraction(0)) >= observed
    return count, total


def assert_log10_close(got: float, ref: float, rel: float = REL_TOL) -> None:
    """|got - ref| <= rel * |ref| + 1e-300; -inf must match exactly."""
    if ref == -math.inf or got == -math.inf:
        assert got == ref, f"got {got!r}, reference {ref!r}"
        return
    assert abs(got - ref) <= rel * abs(ref) + ABS_TOL, f"got {got!r}, reference {ref!r}"


def nucleus_reference(
    logprobs: Sequence[float], top_p: float, u: float, allowed: Sequence[bool] | None = None
) -> int:
    """The token a nucleus draw picks with the uniform ``u``, by its definition: the allowed
    finite tokens by decreasing probability (ties by id), the smallest head holding ``top_p`` of
    their mass, renormalised, and the first whose cumulative weight exceeds ``u``."""
    keep = [
        math.isfinite(v) and (allowed is None or bool(allowed[i])) for i, v in enumerate(logprobs)
    ]
    top = max(v for v, k in zip(logprobs, keep, strict=True) if k)
    probs = [math.exp(v - top) if k else 0.0 for v, k in zip(logprobs, keep, strict=True)]
    total = sum(probs)
    order = sorted(range(len(probs)), key=lambda t: (-probs[t], t))
    head, mass = [], 0.0
    for t in order:
        head.append(t)
        mass += probs[t] / total
        if mass >= top_p - 1e-12:
            break
    head_mass = sum(probs[t] for t in head)
    cumulative = 0.0
    for t in head:
        cumulative += probs[t] / head_mass
        if cumulative > u:
            return t
    return head[-1]
