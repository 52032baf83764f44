"""The public tests of :mod:`tuneproof.stats`: log10 p-values with the null they are for."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.stats.tails import (
    FloatArray,
    binomial_tail_ln,
    fisher_tail_ln,
    hypergeom_tail_ln,
    pb_tail_ln,
)

LN10 = math.log(10.0)
LN2 = math.log(2.0)


class Null(StrEnum):
    """The null hypotheses of DESIGN.md; every p-value says which one it is for."""

    BASE = "H0-base"  # the returned model is the base model (answers sampled at temperature 1)
    INDEP = "H0-indep"  # the returned model does not depend on the secret (model-free)
    CONTROLS = "H0-controls"  # the model treats planted and held-out pairs alike


@dataclass(frozen=True, slots=True)
class PValue:
    """A p-value and what it means.

    ``log10_p`` is log10 of the p-value (0.0 for p = 1; ``-inf`` only when p = 0 exactly, e.g.
    more hits than queries). ``null`` is the hypothesis it tests, ``method`` says how it was
    computed, ``inputs`` summarises the data (small, JSON-friendly), and ``log10_resolution``
    is log10 of the smallest p-value the method can return when that is not 0 (Monte-Carlo and
    permutation tests), else ``None``.
    """

    log10_p: float
    null: Null
    method: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    log10_resolution: float | None = None

    @property
    def p(self) -> float:
        """The p-value as a float (0.0 when it is below ~1e-308: use ``log10_p``)."""
        return 10.0**self.log10_p

    def rejects(self, alpha: float) -> bool:
        """True when p < ``alpha`` (compared in log space, so it works for any alpha > 0)."""
        return self.log10_p < math.log10(alpha)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict for reports (``null`` as its string value)."""
        return {
            "log10_p": self.log10_p,
            "null": str(self.null),
            "method": self.method,
            "inputs": dict(self.inputs),
            "log10_resolution": self.log10_resolution,
        }

    def __str__(self) -> str:
        return f"log10 p = {self.log10_p:.3f} [{self.null}] ({self.method})"


def _log10_probs(values: Iterable[float] | FloatArray, name: str) -> FloatArray:
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of log10 probabilities")
    if np.isnan(arr).any() or (arr > 0).any():
        bad = arr[np.isnan(arr) | (arr > 0)][0]
        raise ValueError(f"{name} must hold log10 probabilities <= 0 (got {bad!r})")
    return arr


def _count(value: int, name: str) -> int:
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def _log10(ln_value: float) -> float:
    return ln_value / LN10 if ln_value != 0.0 else 0.0


# --------------------------------------------------------------------------- public tests


def log10_poisson_binomial_sf(
    log10_probs: Sequence[float] | FloatArray, k: int, *, null: Null = Null.BASE
) -> PValue:
    """log10 P[X >= k] where X is the number of successes of independent Bernoulli(p_i).

    ``log10_probs`` holds log10 p_i (each <= 0; ``0.0`` means p_i = 1, ``-inf`` means p_i = 0,
    values like -400 are fine). Exact dynamic programme in log space, O(n * min(k, n - k)),
    relative error ~1e-12. Returns 0.0 when k = 0 and ``-inf`` when k exceeds the number of
    p_i > 0 (probability exactly 0). ``null`` labels the result (H0-base by default; the
    model-free bound passes H0-indep).
    """
    log10_p = _log10_probs(log10_probs, "log10_probs")
    k = _count(k, "k")
    ln_p = log10_p * LN10
    value = _log10(pb_tail_ln(ln_p, k))
    inputs = {
        "n": int(log10_p.size),
        "k": k,
        "log10_p_max": float(log10_p.max()) if log10_p.size else None,
        "expected_hits": float(np.exp(ln_p).sum()),
    }
    return PValue(value, null, "exact Poisson-binomial tail P[X >= k]", inputs)


def log10_binomial_sf(n: int, log10_p: float, k: int, *, null: Null = Null.BASE) -> PValue:
    """log10 P[X >= k] for X ~ Binomial(n, p), with ``log10_p`` = log10 p <= 0.

    Sums the exact terms C(n, j) p^j (1-p)^(n-j), j >= k, in log space (or 1 minus the lower
    terms when the tail is above 1/2). Returns 0.0 when k = 0 and ``-inf`` when k > n or p = 0.
    Binomial(n, max p_i) is a valid upper bound for the Poisson-binomial tail.
    """
    n = _count(n, "n")
    k = _count(k, "k")
    lp = float(_log10_probs([log10_p], "log10_p")[0])
    value = _log10(binomial_tail_ln(n, lp * LN10, k))
    return PValue(value, null, "exact binomial tail P[X >= k]", {"n": n, "k": k, "log10_p": lp})


def log10_model_free_bound(
    bits: Sequence[float] | FloatArray,
    answer_lengths: Sequence[int] | npt.NDArray[np.integer[Any]],
    hits: Sequence[bool] | npt.NDArray[np.bool_],
    groups: Sequence[Hashable] | None = None,
    *,
    min_signature_chars: Sequence[int] | npt.NDArray[np.integer[Any]] | None = None,
) -> PValue:
    """The H0-indep p-value: an upper bound on P[at least this many hit events] valid for any
    model that does not depend on the secret (see docs/statistics.md for the proof).

    Per query i: ``bits[i]`` = m_i log2 K_i of its signature (drawn by the uniform prefix-free
    sampler), ``answer_lengths[i]`` = number of characters of the whitespace-stripped answer,
    ``hits[i]`` = whether the signature occurs in it. The per-query bound is
    b_i = min(1, n_i * 2^-bits_i), with n_i = ``answer_lengths[i]`` candidate start positions, or
    n_i = max(0, answer_lengths[i] - min_signature_chars[i] + 1) when ``min_signature_chars`` is
    given. ``min_signature_chars[i]`` must be a lower bound, fixed before the draw, on the length
    of EVERY string the sampler could have produced for query i: m_i always qualifies (each kept
    token decodes to at least one character). Never pass the drawn signature's own length: a
    bound that depends on the draw is not valid (docs/statistics.md has a counterexample).

    Queries with the same ``groups`` label share one signature: they form one event that hits
    when any member hits, with bound min(1, sum of the members' b_i). Distinct groups must have
    independently drawn signatures. Returns log10 P[X >= k], X ~ Poisson-binomial over the group
    bounds, k = number of groups that hit (0.0 when nothing hit). Raises ``ValueError`` when a
    hit is recorded on an answer too short to contain its signature.
    """
    bits_arr = np.asarray(bits, dtype=np.float64)
    lengths = np.asarray(answer_lengths)
    hit_arr = np.asarray(hits, dtype=bool)
    n = bits_arr.size
    if bits_arr.ndim != 1 or lengths.shape != (n,) or hit_arr.shape != (n,):
        raise ValueError("bits, answer_lengths and hits must be flat sequences of equal length")
    if not np.isfinite(bits_arr).all() or (bits_arr < 0).any():
        raise ValueError("bits must be finite and >= 0")
    if n and (not np.issubdtype(lengths.dtype, np.integer) or (lengths < 0).any()):
        raise ValueError("answer_lengths must be integers >= 0 (characters of stripped answers)")
    positions = lengths.astype(np.float64)
    if min_signature_chars is not None:
        min_chars = np.asarray(min_signature_chars)
        if min_chars.shape != (n,) or (n and not np.issubdtype(min_chars.dtype, np.integer)):
            raise ValueError("min_signature_chars must be integers, one per query")
        if (min_chars < 1).any():
            raise ValueError("min_signature_chars must be >= 1")
        positions = np.maximum(0.0, positions - min_chars + 1)
    if (hit_arr & (positions == 0)).any():
        i = int(np.flatnonzero(hit_arr & (positions == 0))[0])
        raise ValueError(
            f"query {i} is marked as a hit but its answer is too short to contain the signature"
            " - check the answer lengths (characters of the stripped answer)"
        )
    with np.errstate(divide="ignore"):
        ln_b = np.minimum(0.0, np.log(positions) - bits_arr * LN2)
    labels = list(range(n)) if groups is None else list(groups)
    if len(labels) != n:
        raise ValueError("groups must have one label per query")
    index: dict[Hashable, int] = {}
    inverse = np.array([index.setdefault(label, len(index)) for label in labels], dtype=np.intp)
    ln_group = np.full(len(index), -np.inf)
    np.logaddexp.at(ln_group, inverse, ln_b)
    ln_group = np.minimum(ln_group, 0.0)
    group_hit = np.zeros(len(index), dtype=bool)
    np.logical_or.at(group_hit, inverse, hit_arr)
    k = int(group_hit.sum())
    inputs = {
        "n_queries": n,
        "n_events": len(index),
        "hits": k,
        "bits_min": float(bits_arr.min()) if n else None,
        "bits_max": float(bits_arr.max()) if n else None,
        "sum_bounds": float(np.exp(ln_group).sum()),
    }
    start = "n - min_chars + 1" if min_signature_chars is not None else "n"
    method = f"model-free bound: Poisson-binomial tail over b = min(1, ({start}) * 2^-bits)"
    return PValue(_log10(pb_tail_ln(ln_group, k)), Null.INDEP, method, inputs)


def log10_fisher_exact(
    hits_planted: int, n_planted: int, hits_held_out: int, n_held_out: int
) -> PValue:
    """One-sided Fisher exact test that planted pairs hit more often than held-out pairs.

    Conditional on the total number of hits, under H0-controls the planted pairs are a uniformly
    random subset of all pairs, so the planted hit count is Hypergeometric(N = n_planted +
    n_held_out, K = total hits, n_planted draws). Returns log10 P[that count >= hits_planted]
    (0.0 when there are no hits). Exact terms summed in log space.
    """
    hp, n_p = _count(hits_planted, "hits_planted"), _count(n_planted, "n_planted")
    hh, n_h = _count(hits_held_out, "hits_held_out"), _count(n_held_out, "n_held_out")
    if hp > n_p or hh > n_h:
        raise ValueError("hit counts cannot exceed the number of pairs")
    value = _log10(hypergeom_tail_ln(n_p + n_h, hp + hh, n_p, hp))
    inputs = {"hits_planted": hp, "n_planted": n_p, "hits_held_out": hh, "n_held_out": n_h}
    return PValue(value, Null.CONTROLS, "one-sided Fisher exact (hypergeometric tail)", inputs)


@lru_cache(maxsize=8)
def _combinations(n: int, r: int) -> npt.NDArray[np.intp]:
    count = math.comb(n, r)
    flat = itertools.chain.from_iterable(itertools.combinations(range(n), r))
    combos = np.fromiter(flat, dtype=np.intp, count=count * r).reshape(count, r)
    combos.flags.writeable = False
    return combos


def log10_permutation_test(
    planted_scores: Sequence[float] | FloatArray,
    held_out_scores: Sequence[float] | FloatArray,
    *,
    max_exact: int = 200_000,
    n_resamples: int = 99_999,
    seed: int | None = 0,
) -> PValue:
    """One-sided permutation test that planted pairs score higher than held-out pairs.

    The statistic is the sum of the planted scores (e.g. signature log-likelihoods under the
    verified model). Under H0-controls all scores are exchangeable, so the observed planted set
    is a uniformly random subset of the pooled scores. Ties count against the alternative
    (>=, with a tolerance for floating-point rounding of the sums).

    When C(n_planted + n_held_out, n_planted) <= ``max_exact``, enumerates every split and
    returns log10 of the exact fraction with statistic >= observed (resolution 1/C). Otherwise
    draws ``n_resamples`` = B random splits (numpy PCG64 seeded with ``seed``) and returns
    log10 (1 + #{resampled >= observed}) / (B + 1), a valid p-value that is never 0 and never
    below the resolution 1/(B + 1). ``log10_resolution`` holds log10 of that smallest value.
    """
    x = np.asarray(planted_scores, dtype=np.float64).ravel()
    y = np.asarray(held_out_scores, dtype=np.float64).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError("the permutation test needs at least one planted and one held-out score")
    pooled = np.concatenate([x, y])
    if not np.isfinite(pooled).all():
        raise ValueError("scores must be finite (got NaN or infinity)")
    n, r = pooled.size, x.size
    total = float(pooled.sum())
    t_obs = float(x.sum())
    # Sums of the same numbers in another order differ by at most ~n * eps * sum|x|.
    threshold = t_obs - 4.0 * n * np.finfo(np.float64).eps * float(np.abs(pooled).sum())
    arrangements = math.comb(n, r)
    inputs: dict[str, Any] = {
        "n_planted": r,
        "n_held_out": int(y.size),
        "mean_planted": float(x.mean()),
        "mean_held_out": float(y.mean()),
    }
    if arrangements <= max_exact:
        side = min(r, n - r)  # enumerate the smaller side; the planted sum follows
        sums = pooled[_combinations(n, side)].sum(axis=1)
        if side != r:
            sums = total - sums
        count = int(np.count_nonzero(sums >= threshold))
        inputs["arrangements"] = arrangements
        return PValue(
            math.log10(count) - math.log10(arrangements),
            Null.CONTROLS,
            f"exact permutation test over all {arrangements} splits",
            inputs,
            log10_resolution=-math.log10(arrangements),
        )
    b = _count(n_resamples, "n_resamples")
    if b < 1:
        raise ValueError("n_resamples must be >= 1")
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)
    count = 0
    for start in range(0, b, chunk):
        rows = min(chunk, b - start)
        perm = rng.permuted(np.broadcast_to(pooled, (rows, n)), axis=1)
        count += int(np.count_nonzero(perm[:, :r].sum(axis=1) >= threshold))
    inputs.update({"log10_arrangements": math.log10(arrangements), "resamples": b, "seed": seed})
    return monte_carlo_pvalue(count, b, "Monte-Carlo permutation test", inputs)


def monte_carlo_pvalue(count: int, resamples: int, name: str, inputs: dict[str, Any]) -> PValue:
    """The H0-controls p-value of a Monte-Carlo permutation test: (1 + count) / (B + 1), where
    ``count`` of the B = ``resamples`` random splits scored at least the observed one. The +1
    counts the observed split itself: valid for any B, never 0, resolution 1 / (B + 1)."""
    return PValue(
        math.log10(1 + count) - math.log10(resamples + 1),
        Null.CONTROLS,
        f"{name}, {resamples} random splits, (1 + count) / (B + 1)",
        inputs,
        log10_resolution=-math.log10(resamples + 1),
    )


def combine_fisher(
    pvalues: Sequence[float | PValue] | FloatArray, *, null: Null | None = None
) -> PValue:
    """Fisher's method: combine independent p-values into one.

    ``pvalues`` are log10 p-values (floats <= 0) or :class:`PValue` results. Returns log10
    P[chi2(2n) >= -2 sum ln p_i], computed in closed form (exp(-s) sum_{j<n} s^j / j!, with
    s = -sum ln p_i), exact in log space. Valid when the inputs are independent and each is a
    valid p-value (uniform or conservative) under the same null. The null is taken from the
    :class:`PValue` inputs (they must agree) or from ``null``, which is required for bare floats.
    """
    items = list(pvalues)
    if not items:
        raise ValueError("combine_fisher needs at least one p-value")
    nulls = {item.null for item in items if isinstance(item, PValue)}
    if null is not None:
        nulls.add(null)
    if len(nulls) != 1:
        raise ValueError(
            "combine_fisher combines p-values for one null: pass null=Null... for bare numbers"
            if not nulls
            else f"cannot combine p-values for different nulls: {sorted(map(str, nulls))}"
        )
    values = [item.log10_p if isinstance(item, PValue) else item for item in items]
    log10_p = _log10_probs(values, "pvalues")
    inputs = {"n": len(items), "sum_log10_p": float(log10_p.sum())}
    value = _log10(fisher_tail_ln(log10_p * LN10))
    return PValue(value, nulls.pop(), f"Fisher's method over {len(items)} p-values", inputs)
