"""The model-free bound (H0-indep): its definition against an mpmath reference, and its validity
against signatures drawn by the real prefix-free sampler of ``tuneproof.planting.sampler``."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stats_reference import assert_log10_close, pb_bruteforce

from tuneproof.lab.calibration import SYNTHETIC_VOCAB, synthetic_ranker
from tuneproof.planting.sampler import enumerate_prefix_free, sample_prefix_free
from tuneproof.planting.secret import SecretStream
from tuneproof.stats import Null, log10_model_free_bound

# --------------------------------------------------------------------------- definition


def test_single_query() -> None:
    result = log10_model_free_bound([128.0], [1000], [True])
    assert result.null is Null.INDEP
    assert result.log10_p == pytest.approx(3 - 128 * math.log10(2), rel=1e-12)
    assert log10_model_free_bound([128.0], [1000], [False]).log10_p == 0.0
    # DESIGN.md's orders of magnitude: one hit on 129 bits (K = 8, m = 43), ten on 32 bits
    assert -37 < log10_model_free_bound([129.0], [1000], [True]).log10_p < -35
    assert -72 < log10_model_free_bound([32.0] * 10, [300] * 10, [True] * 10).log10_p < -70


def test_bound_is_capped_at_one() -> None:
    # 100 positions, 4 bits: b = min(1, 100/16) = 1, so a hit proves nothing
    assert log10_model_free_bound([4.0], [100], [True]).log10_p == 0.0


def test_min_signature_chars_gives_fewer_start_positions() -> None:
    plain = log10_model_free_bound([20.0], [50], [True]).log10_p
    tighter = log10_model_free_bound([20.0], [50], [True], min_signature_chars=[10]).log10_p
    assert tighter == pytest.approx(math.log10(41) - 20 * math.log10(2), rel=1e-12)
    assert tighter < plain
    # an answer shorter than every possible signature cannot hit: bound 0
    assert log10_model_free_bound([20.0], [5], [False], min_signature_chars=[10]).log10_p == 0.0
    with pytest.raises(ValueError, match="too short"):
        log10_model_free_bound([20.0], [5], [True], min_signature_chars=[10])
    with pytest.raises(ValueError, match="too short"):
        log10_model_free_bound([20.0], [0], [True])


def test_replicas_form_one_event() -> None:
    # three replicas of one 30-bit signature, one of them hits: one event, bound = sum of b
    b = [100 * 2.0**-30, 200 * 2.0**-30, 300 * 2.0**-30]
    result = log10_model_free_bound(
        [30.0] * 3, [100, 200, 300], [False, True, False], ["s", "s", "s"]
    )
    assert result.inputs["n_events"] == 1 and result.inputs["hits"] == 1
    assert result.log10_p == pytest.approx(math.log10(sum(b)), rel=1e-12)
    # when all replicas hit, it is still one event: treating the replicas as independent would
    # multiply their bounds and overstate the evidence enormously
    all_hit = log10_model_free_bound([30.0] * 3, [100, 200, 300], [True] * 3, ["s", "s", "s"])
    assert all_hit.log10_p == pytest.approx(result.log10_p, rel=1e-12)
    as_independent = log10_model_free_bound([30.0] * 3, [100, 200, 300], [True] * 3)
    assert as_independent.log10_p == pytest.approx(sum(math.log10(x) for x in b), rel=1e-12)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal length"):
        log10_model_free_bound([10.0], [5, 6], [True])
    with pytest.raises(ValueError, match="integers"):
        log10_model_free_bound([10.0], [5.5], [True])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="bits"):
        log10_model_free_bound([-1.0], [5], [True])
    with pytest.raises(ValueError, match="one label per query"):
        log10_model_free_bound([10.0, 10.0], [5, 5], [True, True], groups=["a"])


def reference_bound(
    bits: Sequence[float],
    lengths: Sequence[int],
    hits: Sequence[bool],
    groups: Sequence[int],
    min_chars: Sequence[int] | None,
) -> float:
    """The bound from its definition, with a brute-force tail. 400 digits: ``2**-bits`` must stay
    distinguishable from 1 for every positive double ``bits`` (1 - 2**-1e-300 needs ~300)."""
    with mp.workdps(400):
        bound: dict[int, mp.mpf] = {}
        hit: dict[int, bool] = {}
        for i, g in enumerate(groups):
            start = lengths[i] if min_chars is None else max(0, lengths[i] - min_chars[i] + 1)
            b_i = min(mp.mpf(1), start * mp.power(2, -mp.mpf(bits[i])))
            bound[g] = bound.get(g, mp.mpf(0)) + b_i
            hit[g] = hit.get(g, False) or hits[i]
        log10_b = [-math.inf if b == 0 else float(mp.log10(min(1, b))) for b in bound.values()]
        return pb_bruteforce(log10_b, sum(hit.values()))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 9), st.data())
def test_bound_matches_reference(n: int, data: st.DataObject) -> None:
    bits = data.draw(st.lists(st.floats(0.0, 200.0), min_size=n, max_size=n))
    lengths = data.draw(st.lists(st.integers(0, 5000), min_size=n, max_size=n))
    groups = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    min_chars = data.draw(st.none() | st.lists(st.integers(1, 40), min_size=n, max_size=n))
    starts = (
        lengths
        if min_chars is None
        else [max(0, a - c + 1) for a, c in zip(lengths, min_chars, strict=True)]
    )
    hits = [bool(s) and data.draw(st.booleans()) for s in starts]
    got = log10_model_free_bound(bits, lengths, hits, groups, min_signature_chars=min_chars)
    assert_log10_close(got.log10_p, reference_bound(bits, lengths, hits, groups, min_chars))


def test_the_drawn_signature_length_must_not_be_used() -> None:
    """Why ``min_signature_chars`` is a fixed lower bound and not the drawn signature's length.

    K = 16, m = 1: four one-character candidates and twelve 8-character ones (prefix-free). The
    answer "abcd" contains each short one, so P[hit] = 4/16 = b for both queries. Using the drawn
    length, a long (missed) signature gets bound 0, and P[p <= 1/4] = 1 - (3/4)^2 = 7/16 > 1/4.
    """
    candidates = ["a", "b", "c", "d"] + [ch * 8 for ch in "efghijklmnop"]
    answer = "abcd"
    size_fixed = size_drawn = 0.0
    for s1, s2 in itertools.product(candidates, repeat=2):
        hits = [s1 in answer, s2 in answer]
        fixed = log10_model_free_bound([4.0, 4.0], [4, 4], hits, min_signature_chars=[1, 1])
        drawn = log10_model_free_bound(
            [4.0, 4.0], [4, 4], hits, min_signature_chars=[len(s1), len(s2)]
        )
        size_fixed += (fixed.log10_p <= math.log10(0.25) + 1e-12) / 256
        size_drawn += (drawn.log10_p <= math.log10(0.25) + 1e-12) / 256
    assert size_fixed == pytest.approx(1 / 16)  # valid: <= 1/4
    assert size_drawn == pytest.approx(7 / 16)  # invalid: > 1/4


# --------------------------------------------------------------------------- simulation

VOCAB = list(SYNTHETIC_VOCAB)
ALPHABET = "abc"


@pytest.mark.parametrize(("k", "m"), [(2, 3), (3, 3), (3, 4)])
def test_sampler_trees_are_prefix_free(k: int, m: int) -> None:
    for prompt in range(50):
        strings = list(enumerate_prefix_free(synthetic_ranker(prompt), VOCAB, k, m))
        assert len(strings) == k**m == len(set(strings))
        for a, b in itertools.permutations(strings, 2):
            assert not b.startswith(a)


def test_hit_rate_never_exceeds_the_bound_with_the_real_sampler() -> None:
    """>= 100,000 signatures from the real sampler and SecretStream; answers from processes that
    never see the secret: uniform text, and text stitched from the public candidate tree (the best
    a provider who knows the generator but not the secret can do)."""
    trials, n_prompts = 100_000, 240
    configs = [(2, 3), (3, 3), (3, 4)]
    stream = SecretStream(b"calibration-seed-for-tests-00000")
    rng = np.random.default_rng(11)  # the answer process: independent of the secret stream
    rankers = [synthetic_ranker(p) for p in range(n_prompts)]
    trees = {
        (p, k, m): [s.decode() for s in enumerate_prefix_free(rankers[p], VOCAB, k, m)]
        for p in range(n_prompts)
        for k, m in configs
    }
    bits = np.empty(trials)
    lengths = np.empty(trials, dtype=np.int64)
    bound = np.empty(trials)
    bound_m = np.empty(trials)
    exact = np.empty(trials)
    hit = np.zeros(trials, dtype=bool)
    for t in range(trials):
        prompt = int(rng.integers(n_prompts))
        k, m = configs[t % len(configs)]
        tree = trees[prompt, k, m]
        if t % 2:
            answer = "".join(rng.choice(list(ALPHABET), size=int(rng.integers(1, 3 * k**m))))
        else:
            pieces = rng.choice(len(tree), size=int(rng.integers(1, 1 + k**m // 2)))
            answer = "".join(tree[i] for i in pieces)
        signature = sample_prefix_free(rankers[prompt], VOCAB, k, m, stream)
        assert signature.text in tree
        hit[t] = signature.text in answer
        exact[t] = sum(s in answer for s in tree) / k**m  # P[hit | prompt, answer], enumerated
        bits[t], lengths[t] = signature.bits, len(answer)
        bound[t] = min(1.0, len(answer) / k**m)
        bound_m[t] = min(1.0, max(0, len(answer) - m + 1) / k**m)

    # 1. exactly, for every (prompt, answer) drawn: P[hit] <= b, also with the min-length bound
    assert (exact <= bound_m + 1e-12).all() and (bound_m <= bound).all()
    # 2. the observed hit rate matches the exact probabilities and never exceeds the bound, also
    #    within each decile of the bound
    sd = math.sqrt(float((exact * (1 - exact)).sum()))
    assert abs(hit.sum() - exact.sum()) <= 5 * sd
    for decile in np.array_split(np.argsort(bound_m), 10):
        observed, allowed = hit[decile].sum(), bound_m[decile].sum()
        assert observed <= allowed + 4 * math.sqrt(allowed) + 1, (observed, allowed)
    # 3. the combined p-value of blocks of 10 independent queries is valid at alpha = 1e-2, 1e-3
    blocks = trials // 10
    log10_p = np.array([
        log10_model_free_bound(bits[j : j + 10], lengths[j : j + 10], hit[j : j + 10]).log10_p
        for j in range(0, trials, 10)
    ])  # fmt: skip
    for alpha in (1e-2, 1e-3):
        false_positives = int((log10_p <= math.log10(alpha)).sum())
        assert false_positives <= blocks * alpha + 4 * math.sqrt(blocks * alpha) + 1
