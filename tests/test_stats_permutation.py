"""The permutation test: exact enumeration against brute force with exact rational sums,
Monte-Carlo against exact, ties, resolution, and the +1 correction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stats_reference import permutation_bruteforce

from tuneproof.stats import Null, log10_permutation_test

SETTINGS = settings(max_examples=120, deadline=None)

# Integer-valued scores: sums are exact in floating point, and ties are frequent.
tied_scores = st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=7)
real_scores = st.lists(
    st.floats(-200.0, 0.0, allow_subnormal=False).map(lambda v: round(v, 3)), min_size=1, max_size=7
)


@SETTINGS
@given(tied_scores, tied_scores)
def test_exact_matches_brute_force_with_ties(planted: list[float], held_out: list[float]) -> None:
    result = log10_permutation_test(planted, held_out)
    count, total = permutation_bruteforce(planted, held_out)
    assert result.null is Null.CONTROLS
    assert result.inputs["arrangements"] == total
    assert result.log10_p == pytest.approx(math.log10(count / total), rel=1e-12, abs=1e-12)
    assert result.log10_resolution == pytest.approx(-math.log10(total))


@SETTINGS
@given(real_scores, real_scores)
def test_exact_is_never_below_brute_force(planted: list[float], held_out: list[float]) -> None:
    # With inexact sums the test may only err on the conservative side (ties count as >=).
    count, total = permutation_bruteforce(planted, held_out)
    got = log10_permutation_test(planted, held_out).log10_p
    assert got >= math.log10(count / total) - 1e-12


def test_ties_count_against_the_alternative() -> None:
    # all scores equal: every split ties with the observed one, p = 1
    assert log10_permutation_test([1.0, 1.0], [1.0, 1.0, 1.0]).log10_p == 0.0
    # 0.1 + 0.2 != 0.3 in floating point: rounding must not break the tie
    assert log10_permutation_test([0.1, 0.2], [0.3, 0.0]).log10_p == pytest.approx(
        math.log10(4 / 6)
    )


def test_exact_uses_the_smaller_side() -> None:
    planted = list(np.linspace(10, 20, 30))
    held_out = [0.0, 1.0]
    result = log10_permutation_test(planted, held_out)
    assert result.method.startswith("exact")
    assert result.log10_p == pytest.approx(-math.log10(math.comb(32, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_monte_carlo_agrees_with_exact(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    planted = rng.normal(0.6, 1.0, size=6)
    held_out = rng.normal(0.0, 1.0, size=7)  # C(13, 6) = 1716 splits
    exact = log10_permutation_test(planted, held_out)
    b = 20_000
    mc = log10_permutation_test(planted, held_out, max_exact=0, n_resamples=b, seed=seed)
    assert exact.method.startswith("exact") and mc.method.startswith("Monte-Carlo")
    p, p_hat = 10**exact.log10_p, 10**mc.log10_p
    assert abs(p_hat - p) <= 5 * math.sqrt(p * (1 - p) / b) + 2 / b
    assert mc.log10_resolution == pytest.approx(-math.log10(b + 1))


def test_monte_carlo_never_returns_zero() -> None:
    planted = np.arange(40.0) + 100
    held_out = np.arange(40.0)  # C(80, 40) ~ 1e23: Monte-Carlo; no random split reaches it
    result = log10_permutation_test(planted, held_out, n_resamples=999, seed=7)
    assert result.log10_p == pytest.approx(-3.0)
    assert result.log10_p == result.log10_resolution
    assert result.inputs["resamples"] == 999 and result.inputs["seed"] == 7
    again = log10_permutation_test(planted, held_out, n_resamples=999, seed=7)
    assert again.log10_p == result.log10_p


def test_monte_carlo_is_uniform_when_nothing_differs() -> None:
    # a p-value from B resamples under exchangeability: P[p <= j/(B+1)] = j/(B+1) exactly
    rng = np.random.default_rng(5)
    values = [
        10
        ** log10_permutation_test(
            rng.normal(size=15), rng.normal(size=15), n_resamples=99, seed=int(rng.integers(2**31))
        ).log10_p
        for _ in range(400)
    ]
    assert min(values) >= 0.01
    frac = np.mean(np.asarray(values) <= 0.2)
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 400)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        log10_permutation_test([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        log10_permutation_test([math.nan], [1.0])
    with pytest.raises(ValueError, match="finite"):
        log10_permutation_test([-math.inf], [1.0])
    with pytest.raises(ValueError, match="n_resamples"):
        log10_permutation_test([1.0] * 30, [0.0] * 30, n_resamples=0)
