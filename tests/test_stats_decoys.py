"""The decoy rank test: brute-force reference, extreme tails, ties, and validity when the planted
index is uniform and the scores never see it."""

from __future__ import annotations

import itertools
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stats_reference import assert_log10_close

from tuneproof.stats import Null, decoy_rank, log10_decoy_rank_test


def reference(ranks: list[int], sizes: list[int]) -> float:
    """log10 P[sum of independent Uniform{1..n_i} <= observed sum], every outcome enumerated
    with exact fractions (100-digit mpmath for the logarithm)."""
    observed = sum(ranks)
    total = math.prod(sizes)
    count = sum(
        1 for o in itertools.product(*(range(1, n + 1) for n in sizes)) if sum(o) <= observed
    )
    with mp.workdps(100):
        return float(mp.log10(mp.mpf(count) / total))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_matches_brute_force(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 4))
    sizes = data.draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    ranks = [data.draw(st.integers(1, size)) for size in sizes]
    got = log10_decoy_rank_test(ranks, sizes)
    assert got.null is Null.INDEP
    assert_log10_close(got.log10_p, reference(ranks, sizes))


def test_extreme_tail() -> None:
    """60 pairs with 99 decoys each, every true signature first: p = 100^-60 exactly."""
    got = log10_decoy_rank_test([1] * 60, [100] * 60)
    assert got.log10_p == pytest.approx(-120.0, rel=1e-12)
    assert got.inputs["ranked_first"] == 60
    assert log10_decoy_rank_test([], []).log10_p == 0.0
    assert log10_decoy_rank_test([32] * 5, [32] * 5).log10_p == 0.0


def test_ties_count_against_the_true_signature() -> None:
    assert decoy_rank(-10.0, [-20.0, -30.0]) == 1
    assert decoy_rank(-10.0, [-10.0, -30.0]) == 2  # an exact tie
    assert decoy_rank(-10.0, [-10.0 - 1e-9, -5.0]) == 3  # within rounding: a tie
    assert decoy_rank(-10.0, []) == 1


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="between 1 and"):
        log10_decoy_rank_test([5], [4])
    with pytest.raises(ValueError, match="between 1 and"):
        log10_decoy_rank_test([0], [4])
    with pytest.raises(ValueError, match="equal length"):
        log10_decoy_rank_test([1, 2], [4])


def test_valid_when_the_planted_index_is_uniform() -> None:
    """Scores from a process that never sees which candidate was planted: continuous scores
    (the test is then nearly exact) and coarse ones full of ties (conservative). The p-value of
    10 pairs x 7 candidates is valid at alpha = 0.1, 0.01, 0.001 either way."""
    rng = np.random.default_rng(3)
    trials, pairs, size = 20_000, 10, 7
    for coarse in (False, True):
        pvalues = np.empty(trials)
        for t in range(trials):
            scores = rng.normal(size=(pairs, size))
            if coarse:
                scores = np.round(scores * 2) / 2  # ties are common
            chosen = rng.integers(size, size=pairs)  # the secret's uniform pick
            ranks = [
                decoy_rank(float(row[c]), [float(x) for i, x in enumerate(row) if i != c])
                for row, c in zip(scores, chosen, strict=True)
            ]
            pvalues[t] = log10_decoy_rank_test(ranks, [size] * pairs).log10_p
        for alpha in (0.1, 0.01, 0.001):
            rate = float((pvalues <= math.log10(alpha)).mean())
            assert rate <= alpha + 4 * math.sqrt(alpha / trials), (coarse, alpha, rate)
        if not coarse:  # not vacuous: without ties the size is close to alpha
            assert float((pvalues <= -1).mean()) > 0.08
