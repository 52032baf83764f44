"""Tail probabilities against independent references: brute force over all 2^n outcomes, mpmath at
100 digits, exact integers and scipy. Relative error of every log10 value <= 1e-9."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from stats_reference import (
    assert_log10_close,
    binomial_mp,
    fisher_combine_mp,
    hypergeom_exact,
    pb_bruteforce,
    pb_mp,
    pb_mp_truncated,
)

from tuneproof.stats import (
    Null,
    PValue,
    combine_fisher,
    log10_binomial_sf,
    log10_fisher_exact,
    log10_poisson_binomial_sf,
)

SETTINGS = settings(max_examples=150, deadline=None)

# log10 p_i from every regime: ordinary, tiny (below the double range), exactly 1, exactly 0,
# and a hair below 1 (where 1 - p needs care).
log10_prob = st.one_of(
    st.floats(-3.0, 0.0),
    st.floats(-450.0, -3.0),
    st.floats(-1e-9, 0.0),
    st.sampled_from([0.0, -math.inf, -1e-15, -350.0, -30.0]),
)


def pb(log10_probs: list[float], k: int) -> float:
    return log10_poisson_binomial_sf(log10_probs, k).log10_p


# --------------------------------------------------------------------------- Poisson-binomial


@SETTINGS
@given(st.lists(log10_prob, min_size=0, max_size=9), st.integers(0, 10))
def test_poisson_binomial_matches_brute_force(log10_probs: list[float], k: int) -> None:
    assert_log10_close(pb(log10_probs, k), pb_bruteforce(log10_probs, k))


@SETTINGS
@given(st.lists(log10_prob, min_size=10, max_size=60), st.data())
def test_poisson_binomial_matches_mpmath(log10_probs: list[float], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(log10_probs) + 1))
    assert_log10_close(pb(log10_probs, k), pb_mp(log10_probs, k))


def test_extreme_tail_n1000_p1e30_k50() -> None:
    got = pb([-30.0] * 1000, 50)
    ref = binomial_mp(1000, -30.0, 50)
    assert -1416 < ref < -1414
    assert_log10_close(got, ref)
    assert_log10_close(log10_binomial_sf(1000, -30.0, 50).log10_p, ref)


def test_extreme_tail_heterogeneous_against_mpmath() -> None:
    rng = np.random.default_rng(3)
    log10_probs = list(rng.uniform(-45.0, -20.0, size=300))
    assert_log10_close(pb(log10_probs, 20), pb_mp(log10_probs, 20))


def test_probabilities_below_the_double_range() -> None:
    log10_probs = [-400.0, -1000.0, -350.5, -800.0] * 5
    for k in (1, 3, 7, 20):
        got = pb(log10_probs, k)
        assert math.isfinite(got) and got < -349
        assert_log10_close(got, pb_mp(log10_probs, k))


def test_probability_one_and_zero() -> None:
    assert pb([0.0, 0.0, 0.0], 3) == 0.0
    assert pb([0.0, 0.0, -2.0], 2) == 0.0
    assert_log10_close(pb([0.0, 0.0, -2.0], 3), -2.0)
    # impossible events: more hits than queries with p > 0 -> probability exactly 0
    assert pb([-1.0, -math.inf, -math.inf], 2) == -math.inf
    assert pb([0.0, -math.inf], 2) == -math.inf


def test_k_zero_and_k_above_n() -> None:
    assert pb([-5.0] * 4, 0) == 0.0
    assert pb([], 0) == 0.0
    assert pb([-5.0] * 4, 5) == -math.inf
    assert pb([], 1) == -math.inf


def test_n10000_is_fast_and_right() -> None:
    rng = np.random.default_rng(0)
    log10_probs = np.log10(rng.uniform(0.0, 1.0, size=10_000))
    start = time.perf_counter()
    result = log10_poisson_binomial_sf(log10_probs, 5_050)  # the slowest k: about n/2
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"n = 10,000 took {elapsed:.2f} s"
    assert -10 < result.log10_p < 0
    # equal probabilities: the Poisson-binomial programme must reproduce the binomial closed form
    for k in (1, 30, 120, 9_990):
        got = log10_poisson_binomial_sf(np.full(10_000, -2.0), k).log10_p
        assert_log10_close(got, log10_binomial_sf(10_000, -2.0, k).log10_p, rel=1e-10)
    assert_log10_close(
        log10_poisson_binomial_sf(np.full(10_000, -2.0), 150).log10_p,
        binomial_mp(10_000, -2.0, 150),
    )


def test_n10000_heterogeneous_against_mpmath() -> None:
    rng = np.random.default_rng(8)
    log10_probs = list(rng.uniform(-6.0, -3.0, size=10_000))  # about 1.5 expected hits
    for k in (1, 8):
        assert_log10_close(pb(log10_probs, k), pb_mp_truncated(log10_probs, k))


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="log10 probabilities <= 0"):
        log10_poisson_binomial_sf([0.5], 1)
    with pytest.raises(ValueError, match="log10 probabilities"):
        log10_poisson_binomial_sf([math.nan], 1)
    with pytest.raises(TypeError, match="integer"):
        log10_poisson_binomial_sf([-1.0], 1.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- binomial


@SETTINGS
@given(st.integers(0, 120), log10_prob, st.data())
def test_binomial_matches_mpmath(n: int, log10_p: float, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n + 1))
    assert_log10_close(log10_binomial_sf(n, log10_p, k).log10_p, binomial_mp(n, log10_p, k))


@SETTINGS
@given(st.integers(1, 400), st.floats(0.001, 0.999), st.data())
def test_binomial_matches_scipy(n: int, p: float, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    ref = scipy.stats.binom.sf(k - 1, n, p)
    if ref > 1e-290:
        # scipy's incomplete beta is accurate to ~1e-13 relative in p, not in log10 p near 0
        got = 10 ** log10_binomial_sf(n, math.log10(p), k).log10_p
        assert got == pytest.approx(ref, rel=1e-9)


# --------------------------------------------------------------------------- Fisher exact


@SETTINGS
@given(st.integers(1, 60), st.integers(1, 60), st.data())
def test_fisher_exact_matches_exact_integers(n_p: int, n_h: int, data: st.DataObject) -> None:
    hp = data.draw(st.integers(0, n_p))
    hh = data.draw(st.integers(0, n_h))
    got = log10_fisher_exact(hp, n_p, hh, n_h)
    assert got.null is Null.CONTROLS
    assert_log10_close(got.log10_p, hypergeom_exact(n_p + n_h, hp + hh, n_p, hp))
    ref = scipy.stats.fisher_exact([[hp, n_p - hp], [hh, n_h - hh]], alternative="greater")
    assert 10**got.log10_p == pytest.approx(ref.pvalue, rel=1e-9)


def test_fisher_exact_extreme() -> None:
    # 500 of 500 planted pairs hit, none of 500 held-out: p = 1 / C(1000, 500) ~ 1e-300
    got = log10_fisher_exact(500, 500, 0, 500).log10_p
    assert_log10_close(got, -math.log10(math.comb(1000, 500)))
    assert_log10_close(got, hypergeom_exact(1000, 500, 500, 500))
    assert log10_fisher_exact(0, 10, 0, 10).log10_p == 0.0
    assert log10_fisher_exact(0, 10, 5, 10).log10_p == 0.0
    with pytest.raises(ValueError, match="cannot exceed"):
        log10_fisher_exact(11, 10, 0, 10)


# --------------------------------------------------------------------------- Fisher's method


@SETTINGS
@given(st.lists(st.one_of(st.floats(-5.0, 0.0), st.floats(-2000.0, -5.0)), min_size=1, max_size=40))
def test_combine_fisher_matches_mpmath(log10_pvalues: list[float]) -> None:
    got = combine_fisher(log10_pvalues, null=Null.BASE).log10_p
    assert_log10_close(got, fisher_combine_mp(log10_pvalues))


@SETTINGS
@given(st.lists(st.floats(0.001, 1.0), min_size=1, max_size=20))
def test_combine_fisher_matches_scipy(pvalues: list[float]) -> None:
    got = combine_fisher([math.log10(p) for p in pvalues], null=Null.INDEP).log10_p
    ref = scipy.stats.combine_pvalues(pvalues, method="fisher").pvalue
    assert 10**got == pytest.approx(ref, rel=1e-9)


def test_combine_fisher_edges_and_nulls() -> None:
    assert combine_fisher([0.0, 0.0], null=Null.BASE).log10_p == 0.0
    assert combine_fisher([-math.inf, -1.0], null=Null.BASE).log10_p == -math.inf
    assert_log10_close(combine_fisher([-1400.0], null=Null.BASE).log10_p, -1400.0)
    assert_log10_close(
        combine_fisher([-1e-12, -1e-12], null=Null.BASE).log10_p,
        fisher_combine_mp([-1e-12, -1e-12]),
    )
    results = [log10_fisher_exact(5, 5, 0, 5), log10_fisher_exact(4, 5, 1, 5)]
    combined = combine_fisher(results)
    assert combined.null is Null.CONTROLS
    assert_log10_close(combined.log10_p, fisher_combine_mp([r.log10_p for r in results]))
    with pytest.raises(ValueError, match="pass null="):
        combine_fisher([-3.0])
    with pytest.raises(ValueError, match="different nulls"):
        combine_fisher([*results, log10_poisson_binomial_sf([-1.0], 1)])
    with pytest.raises(ValueError, match="at least one"):
        combine_fisher([], null=Null.BASE)


def test_pvalue_object() -> None:
    result = log10_poisson_binomial_sf([-30.0] * 1000, 50)
    assert isinstance(result, PValue)
    assert result.null is Null.BASE and result.null == "H0-base"
    assert result.p == 0.0  # underflows as a float; log10_p is the value to use
    assert result.rejects(1e-6) and not log10_poisson_binomial_sf([-1.0], 0).rejects(1e-6)
    as_dict = result.to_dict()
    assert as_dict["null"] == "H0-base" and as_dict["inputs"]["n"] == 1000
    assert "log10 p = -1415.0" in str(result)
    with pytest.raises(AttributeError):
        result.log10_p = 0.0  # type: ignore[misc]
