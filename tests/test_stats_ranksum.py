"""The exact rank-sum test: against scipy, brute-force enumeration of splits (with ties and
non-finite scores), exact integer counts, complete separation, and validity under the null."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.stats import binom, mannwhitneyu

from tuneproof.stats import (
    Null,
    log10_rank_sum_floor,
    log10_rank_sum_test,
)
from tuneproof.stats.ranksum import _null_cdf_counts

LN10 = math.log(10.0)


# --------------------------------------------------------------------------- references


def enumerated_p(planted: np.ndarray, held_out: np.ndarray, tol: float) -> float:
    """P[U >= u_obs] over all C(N, r) splits of the pooled values, U computed pair by pair
    (x > y + tol, both finite) on each split: the exact permutation p-value of the same U."""
    pooled = np.concatenate([planted, held_out])
    n, r = pooled.size, planted.size
    finite = np.isfinite(pooled)
    with np.errstate(invalid="ignore"):
        beats = (pooled[:, None] > pooled[None, :] + tol) & finite[:, None] & finite[None, :]
    combos = np.array(list(itertools.combinations(range(n), r)), dtype=np.intp)
    mask = np.zeros((combos.shape[0], n), dtype=bool)
    np.put_along_axis(mask, combos, True, axis=1)
    u = np.einsum("ck,kl,cl->c", mask.astype(np.int64), beats.astype(np.int64), ~mask)
    observed = np.zeros(n, dtype=bool)
    observed[:r] = True
    u_obs = int(observed.astype(np.int64) @ beats.astype(np.int64) @ (~observed))
    return float(np.count_nonzero(u >= u_obs)) / combos.shape[0]


def subset_sum_counts(r: int, n: int) -> list[int]:
    """Exact #{r-subsets of {1..r+n} with Mann-Whitney U = u}, u = 0..rn, by a subset-sum DP
    over the ranks in Python integers (U = rank sum - r(r+1)/2)."""
    top = r * (r + n)
    dp = [[0] * (top + 1) for _ in range(r + 1)]
    dp[0][0] = 1
    for rank in range(1, r + n + 1):
        for k in range(min(rank, r), 0, -1):
            row, prev = dp[k], dp[k - 1]
            for s in range(top, rank - 1, -1):
                row[s] += prev[s - rank]
    base = r * (r + 1) // 2
    return dp[r][base : base + r * n + 1]


def exact_harding_counts(r: int, n: int, top: int) -> list[int]:
    """Exact integer coefficients 0..top of [r + n choose r]_q (Python integers)."""
    c = [1] + [0] * top
    for i in range(1, r + 1):
        for j in range(i, top + 1):
            c[j] += c[j - i]
        for j in range(top, n + i - 1, -1):
            c[j] -= c[j - n - i]
    return c


def planted_for_u(u: int, r: int, n: int) -> np.ndarray:
    """Planted scores (held-out = 0..n-1) whose U is exactly ``u``."""
    wins = np.full(r, u // r)
    wins[: u % r] += 1
    return wins - 0.5


# --------------------------------------------------------------------------- agreement


def test_matches_scipy_exact_on_random_distinct_scores() -> None:
    rng = np.random.default_rng(20240)
    cases = 0
    for _ in range(400):
        r, n = int(rng.integers(1, 26)), int(rng.integers(1, 26))
        shift = rng.choice([0.0, 0.5, 1.5, 4.0])
        x, y = rng.normal(shift, 1.0, r), rng.normal(0.0, 1.0, n)
        ours = log10_rank_sum_test(x, y, tie_tolerance=0.0)
        ref = mannwhitneyu(x, y, alternative="greater", method="exact").pvalue
        assert ours.null is Null.CONTROLS
        assert ours.inputs["u"] == int(mannwhitneyu(x, y).statistic)
        assert abs(ours.log10_p - math.log10(ref)) <= 1e-9 / LN10 + 1e-15, (r, n, ours, ref)
        cases += 1
    assert cases >= 300


@pytest.mark.parametrize("r,n", [(1, 1), (1, 9), (3, 2), (5, 5), (4, 7), (8, 8), (2, 8)])
def test_agrees_with_enumeration_without_ties(r: int, n: int) -> None:
    rng = np.random.default_rng(r * 100 + n)
    for shift in (0.0, 0.5, 1.0, 2.0, 5.0):
        z = rng.normal(size=r + n)
        z[:r] += shift
        values = np.argsort(np.argsort(z)) * 0.01  # distinct, gaps 0.01 > tolerance
        x, y = values[:r], values[r:]
        ours = log10_rank_sum_test(x, y).p
        assert ours == pytest.approx(enumerated_p(x, y, 1e-3), rel=1e-12)


def _tied_case(rng: np.random.Generator, r: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    levels = rng.integers(0, 4, r + n).astype(float)
    levels += rng.choice([0.0, 0.0005, -0.0004, 0.01], r + n)  # within / beyond tolerance
    levels[:r] += rng.integers(0, 2)
    bad = rng.random(r + n) < 0.1
    levels[bad] = rng.choice([np.nan, np.inf, -np.inf], int(bad.sum()))
    return levels[:r], levels[r:]


def test_never_below_enumeration_with_ties_and_non_finite() -> None:
    rng = np.random.default_rng(7)
    strictly_conservative = 0
    for _ in range(150):
        r, n = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        x, y = _tied_case(rng, r, n)
        ours = log10_rank_sum_test(x, y).p
        enum = enumerated_p(x, y, 1e-3)
        assert ours >= enum - 1e-12, (x, y, ours, enum)
        strictly_conservative += ours > enum + 1e-9
    assert strictly_conservative > 0  # ties do make a difference in these cases


@pytest.mark.parametrize("r,n", [(1, 40), (12, 30), (20, 20), (25, 3)])
def test_agrees_with_exact_subset_counts(r: int, n: int) -> None:
    counts = subset_sum_counts(r, n)
    total = math.comb(r + n, r)
    assert sum(counts) == total
    held_out = np.arange(float(n))
    for u in sorted({0, 1, 2, r * n // 3, r * n // 2, r * n // 2 + 1, r * n - 1, r * n}):
        ours = log10_rank_sum_test(planted_for_u(u, r, n), held_out)
        assert ours.inputs["u"] == u
        ref = math.log10(sum(counts[u:])) - math.log10(total)
        assert ours.log10_p == pytest.approx(ref, rel=1e-12, abs=1e-13)


@pytest.mark.parametrize("r,n", [(200, 200), (150, 260)])
def test_large_sizes_keep_full_precision(r: int, n: int) -> None:
    top = r * n // 2
    exact = list(itertools.accumulate(exact_harding_counts(r, n, top)))
    total = math.comb(r + n, r)
    ours = _null_cdf_counts(r, n)
    for u in [0, 10, 100, 1000, top // 4, top // 2, top - 100, top]:
        assert float(ours[u]) == pytest.approx(exact[u], rel=1e-11)
    held_out = np.arange(float(n))
    for u in [top + 1, r * n - top // 2, r * n - 300, r * n - 5]:
        got = log10_rank_sum_test(planted_for_u(u, r, n), held_out).log10_p
        tail = sum(exact_harding_counts(r, n, r * n - u))
        assert got == pytest.approx(math.log10(tail) - math.log10(total), rel=1e-11)


# --------------------------------------------------------------------------- tails and floor


@pytest.mark.parametrize("size", [20, 60, 200])
def test_complete_separation_reaches_the_floor(size: int) -> None:
    planted, held_out = np.arange(size) + 1000.0, np.arange(float(size))
    result = log10_rank_sum_test(planted, held_out)
    expected = -math.log10(math.comb(2 * size, size))
    assert math.isfinite(result.log10_p)
    assert result.log10_p == pytest.approx(expected, rel=1e-13)
    assert result.log10_resolution == pytest.approx(expected, rel=1e-13)
    assert log10_rank_sum_floor(size, size) == pytest.approx(expected, rel=1e-13)
    assert result.inputs["u"] == size * size
    if size == 20:
        assert result.log10_p == pytest.approx(-11.1394, abs=1e-4)


def test_floor_is_attained_and_never_beaten() -> None:
    rng = np.random.default_rng(3)
    for r, n in [(3, 4), (10, 2), (6, 6)]:
        floor = log10_rank_sum_floor(r, n)
        assert log10_rank_sum_test(rng.normal(size=r) + 50, rng.normal(size=n)).log10_p == floor
        for _ in range(20):
            assert log10_rank_sum_test(rng.normal(size=r), rng.normal(size=n)).log10_p >= floor


def test_p_is_one_without_any_win() -> None:
    assert log10_rank_sum_test([0.0, 1.0], [5.0, 6.0]).log10_p == 0.0
    assert log10_rank_sum_test([1.0, 1.0], [1.0, 1.0, 1.0]).log10_p == 0.0  # all tied
    assert log10_rank_sum_test([1.0005], [1.0]).log10_p == 0.0  # within the tolerance


# --------------------------------------------------------------------------- non-finite scores


def test_non_finite_scores_are_never_evidence() -> None:
    finite = [0.0, 1.0, 2.0, 3.0]
    for bad in (np.nan, np.inf, -np.inf):
        assert log10_rank_sum_test([bad] * 4, finite).log10_p == 0.0
        assert log10_rank_sum_test(finite, [bad] * 3).log10_p == 0.0
        assert log10_rank_sum_test([bad] * 2, [bad] * 2).log10_p == 0.0
    assert log10_rank_sum_test([np.nan, np.nan], [np.nan]).log10_p == 0.0
    # a planted +inf loses to everything, a held-out -inf beats everything
    assert log10_rank_sum_test([np.inf, 10.0], [0.0]).inputs["u"] == 1
    assert log10_rank_sum_test([10.0, 11.0], [-np.inf, 0.0]).inputs["u"] == 2
    result = log10_rank_sum_test([10.0, np.nan], [0.0, np.inf])
    assert result.inputs["u"] == 1 and result.inputs["non_finite"] == 2
    assert result.inputs["non_finite_planted"] == 1


def test_inputs_are_json_friendly() -> None:
    result = log10_rank_sum_test([3.0, 4.0, np.nan], [0.0, 1.0])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["inputs"]["n_planted"] == 3 and data["inputs"]["n_held_out"] == 2
    assert data["inputs"]["u"] == 4 and data["inputs"]["auc"] == pytest.approx(4 / 6)
    assert data["null"] == "H0-controls"


def test_rejects_empty_sides_and_bad_tolerance() -> None:
    with pytest.raises(ValueError, match="at least one planted and one held-out"):
        log10_rank_sum_test([], [1.0])
    with pytest.raises(ValueError, match="at least one planted and one held-out"):
        log10_rank_sum_test([1.0], [])
    with pytest.raises(ValueError, match="at least one planted and one held-out"):
        log10_rank_sum_floor(0, 5)
    with pytest.raises(ValueError, match="tie_tolerance"):
        log10_rank_sum_test([1.0], [0.0], tie_tolerance=-1.0)
    with pytest.raises(ValueError, match="tie_tolerance"):
        log10_rank_sum_test([1.0], [0.0], tie_tolerance=math.nan)


# --------------------------------------------------------------------------- validity


SEEDS = {"normal": 1, "integers 0..2": 2, "normal, 10% NaN": 3}


def _scenario(name: str, rng: np.random.Generator, runs: int, size: int) -> np.ndarray:
    if name == "integers 0..2":
        return rng.integers(0, 3, (runs, 2 * size)).astype(float)
    scores = rng.normal(size=(runs, 2 * size))
    if name == "normal, 10% NaN":
        scores[rng.random(scores.shape) < 0.1] = np.nan
    return scores


@pytest.mark.parametrize("name", ["normal", "integers 0..2", "normal, 10% NaN"])
def test_valid_under_the_null(name: str) -> None:
    runs, size = 20_000, 10
    rng = np.random.default_rng(SEEDS[name])
    scores = _scenario(name, rng, runs, size)
    log10_p = np.array([log10_rank_sum_test(s[:size], s[size:]).log10_p for s in scores])
    for alpha in (0.001, 0.01, 0.05, 0.2):
        rejections = int(np.count_nonzero(log10_p <= math.log10(alpha)))
        # one-sided binomial test at 1e-3: is the rejection rate above alpha?
        assert rejections <= binom.isf(1e-3, runs, alpha), (name, alpha, rejections)
    if name == "normal":  # exact for distinct scores: the rate is close to the level
        assert np.count_nonzero(log10_p <= math.log10(0.05)) >= 0.8 * 0.05 * runs


# --------------------------------------------------------------------------- fallback and speed


def test_monte_carlo_fallback_agrees_with_exact() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(0.7, 1.0, 9), rng.normal(0.0, 1.0, 11)
    exact = log10_rank_sum_test(x, y)
    b = 20_000
    mc = log10_rank_sum_test(x, y, max_exact_pairs=0, n_resamples=b, seed=5)
    assert exact.method.startswith("exact") and mc.method.startswith("Monte-Carlo")
    p, p_hat = exact.p, mc.p
    assert abs(p_hat - p) <= 5 * math.sqrt(p * (1 - p) / b) + 2 / b
    assert mc.log10_resolution == pytest.approx(-math.log10(b + 1))
    assert log10_rank_sum_floor(9, 11, max_exact_pairs=0, n_resamples=b) == mc.log10_resolution
    assert log10_rank_sum_test(x, y, max_exact_pairs=0, n_resamples=b, seed=5) == mc
    tied = log10_rank_sum_test([1.0] * 5, [1.0] * 6, max_exact_pairs=0, n_resamples=99)
    assert tied.log10_p == 0.0  # every split ties with the observed one: ties count against


def test_monte_carlo_is_used_above_the_limit_and_never_returns_zero() -> None:
    planted, held_out = np.arange(500.0) + 1000, np.arange(500.0)
    result = log10_rank_sum_test(planted, held_out, n_resamples=999)
    assert result.method.startswith("Monte-Carlo")
    assert result.log10_p == pytest.approx(-3.0)
    assert log10_rank_sum_floor(500, 500, n_resamples=999) == pytest.approx(-3.0)


def test_exact_path_runs_at_400_per_side() -> None:
    """The exact path still runs at 400 + 400 (its speed is a benchmark matter, not asserted)."""
    _null_cdf_counts.cache_clear()
    rng = np.random.default_rng(2)
    result = log10_rank_sum_test(rng.normal(0.2, 1, 400), rng.normal(0, 1, 400))
    assert result.method.startswith("exact") and result.log10_p < -1
