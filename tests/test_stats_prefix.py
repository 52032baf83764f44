"""The prefix test (H0-indep from partial matches): brute-force reference, extreme tails, byte
matching, and its validity with the real sampler and secret stream."""

from __future__ import annotations

import itertools
import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stats_reference import assert_log10_close

from tuneproof.lab.calibration import SYNTHETIC_VOCAB, synthetic_ranker
from tuneproof.planting.sampler import sample_prefix_free
from tuneproof.planting.secret import SecretStream
from tuneproof.stats import Null, log10_prefix_bound, matched_tokens


def reference(matched: list[int], k: list[int], m: list[int], q: list[int]) -> float:
    """log10 P[sum J*_i log2 K_i >= observed] by enumerating every outcome, 100-digit mpmath;
    written from the definition (tails min(1, Q K^-j)), sharing nothing with the library."""
    with mp.workdps(100):
        pmfs = []
        for ki, mi, qi in zip(k, m, q, strict=True):
            tail = [min(mp.mpf(1), qi * mp.mpf(ki) ** -j) for j in range(mi + 1)] + [mp.mpf(0)]
            pmfs.append([tail[j] - tail[j + 1] for j in range(mi + 1)])
        observed = sum(j * math.log2(ki) for j, ki in zip(matched, k, strict=True))
        upper = lower = mp.mpf(0)
        for outcome in itertools.product(*(range(mi + 1) for mi in m)):
            prob = mp.mpf(1)
            for j, pmf in zip(outcome, pmfs, strict=True):
                prob *= pmf[j]
            bits = sum(j * math.log2(ki) for j, ki in zip(outcome, k, strict=True))
            if bits >= observed - 1e-9:
                upper += prob
            else:
                lower += prob
        if upper > 0.5:
            return float(mp.log1p(-lower) / mp.log(10))
        return float(mp.log10(upper))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_matches_brute_force(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 4))
    k = data.draw(st.lists(st.sampled_from([2, 3, 8, 50]), min_size=n, max_size=n))
    m = data.draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    q = data.draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
    matched = [data.draw(st.integers(0, mi)) for mi in m]
    got = log10_prefix_bound(matched, k, m, q)
    assert got.null is Null.INDEP
    assert_log10_close(got.log10_p, reference(matched, k, m, q))


def test_extreme_tail_does_not_underflow() -> None:
    """20 signatures of 40 tokens at K=8, every one matched in full: p = 8^-800 exactly."""
    got = log10_prefix_bound([40] * 20, [8] * 20, [40] * 20)
    assert got.log10_p == pytest.approx(-800 * math.log10(8), rel=1e-12)
    assert got.inputs["full_matches"] == 20


def test_partial_matches_add_up() -> None:
    """Single event, one query: P[J >= j] = K^-j exactly; several events: strictly smaller
    p-values as more tokens match, and more queries per event never give a smaller p-value."""
    assert log10_prefix_bound([5], [8], [40]).log10_p == pytest.approx(-5 * math.log10(8))
    assert log10_prefix_bound([0, 0], [8, 8], [40, 40]).log10_p == 0.0
    values = [log10_prefix_bound([j, 3], [8, 8], [16, 16]).log10_p for j in range(8)]
    assert all(b < a for a, b in itertools.pairwise(values))
    one = log10_prefix_bound([6, 6], [8, 8], [16, 16], [1, 1]).log10_p
    ten = log10_prefix_bound([6, 6], [8, 8], [16, 16], [10, 10]).log10_p
    assert ten > one


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="more tokens than it has"):
        log10_prefix_bound([5], [8], [4])
    with pytest.raises(ValueError, match="equal length"):
        log10_prefix_bound([1, 2], [8], [4])
    with pytest.raises(ValueError, match="k must hold integers >= 2"):
        log10_prefix_bound([1], [1], [4])
    with pytest.raises(ValueError, match="queries"):
        log10_prefix_bound([1], [8], [4], [0])


def test_matched_tokens_counts_whole_tokens_on_bytes() -> None:
    signature = "Héllo wörld again"
    ends = list(
        itertools.accumulate(len(p.encode()) for p in ["Hé", "llo", " wö", "rld", " again"])
    )
    assert matched_tokens("  Héllo wörld again, more", signature, ends) == 5
    assert matched_tokens("Héllo wö", signature, ends) == 3
    assert matched_tokens("Héllo w", signature, ends) == 2  # " wö" is not complete
    assert matched_tokens("Hello", signature, ends) == 0  # é differs in its first byte
    assert matched_tokens("", signature, ends) == 0


def test_valid_with_the_real_sampler() -> None:
    """Signatures from the real sampler and SecretStream; answers that never see the secret: the
    greedy path of the public candidate tree (the likeliest single answer, where the bound is
    tight), random tree paths, and random text. Per token P[J >= j] <= K^-j, and the p-value of
    blocks of 8 signatures is valid at alpha = 0.05 and 0.01."""
    rng = np.random.default_rng(5)
    stream = SecretStream(b"prefix-test-calibration-seed-000")
    k, m, prompts, trials = 3, 4, 60, 24_000
    rankers = [synthetic_ranker(p) for p in range(prompts)]
    greedy = [
        sample_prefix_free(rankers[p], SYNTHETIC_VOCAB, k, m, _FirstChoice()).text
        for p in range(prompts)
    ]
    matched = np.empty(trials, dtype=np.int64)
    for t in range(trials):
        p = int(rng.integers(prompts))
        kind = t % 3
        if kind == 0:
            answer = greedy[p]
        elif kind == 1:
            answer = sample_prefix_free(rankers[p], SYNTHETIC_VOCAB, k, m, _Rng(rng)).text
        else:
            answer = "".join(rng.choice(list("abc"), size=int(rng.integers(1, 12))))
        signature = sample_prefix_free(rankers[p], SYNTHETIC_VOCAB, k, m, stream)
        matched[t] = matched_tokens(answer, signature.text, signature.token_ends)
    for j in range(1, m + 1):
        rate, bound = float((matched >= j).mean()), k**-j
        assert rate <= bound + 4 * math.sqrt(bound / trials), (j, rate, bound)
    greedy_rate = float((matched[::3] >= 1).mean())
    assert greedy_rate == pytest.approx(1 / k, abs=0.02)  # the bound is attained there
    blocks = matched.reshape(-1, 8)
    pvalues = np.array([log10_prefix_bound(b.tolist(), [k] * 8, [m] * 8).log10_p for b in blocks])
    for alpha in (0.05, 0.01):
        rate = float((pvalues <= math.log10(alpha)).mean())
        assert rate <= alpha + 4 * math.sqrt(alpha / blocks.shape[0]), (alpha, rate)
    assert (pvalues < 0).mean() > 0.3  # the test is not vacuous: partial matches do register


class _FirstChoice(SecretStream):
    """A 'stream' that always picks the likeliest candidate: the public greedy path."""

    def __init__(self) -> None:
        super().__init__(b"unused-seed-unused-seed-unused-00")

    def randbelow(self, n: int) -> int:
        return 0


class _Rng(SecretStream):
    """Random paths of the public tree from a generator independent of the secret stream."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(b"unused-seed-unused-seed-unused-00")
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return int(self._rng.integers(n))
