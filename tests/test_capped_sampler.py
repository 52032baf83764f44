"""The capped sampler (signatures drawn by the generator's probabilities, none above 1/k):
its weights against an independent water-filling reference, every path's exact probability by
brute force (at most k^-m, prefix-free, summing to 1), draw frequencies against those
probabilities, and the model-free bound's false-positive rate for the adversary who knows the
generator and answers with its likeliest signature."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from functools import cache

import mpmath as mp
import numpy as np
import pytest
from scipy import stats

from tuneproof.lab.calibration import SYNTHETIC_VOCAB
from tuneproof.planting.capped import CAP_UNIT, capped_weights
from tuneproof.planting.sampler import (
    Ranking,
    ScoredRanking,
    enumerate_paths,
    enumerate_prefix_free,
    sample_prefix_free,
    select_prefix_free,
)
from tuneproof.planting.secret import SecretStream
from tuneproof.stats import log10_model_free_bound


def reference_shares(logprobs: Sequence[float], k: int) -> list[mp.mpf]:
    """Water-filling by bisection on lambda at 60 digits: share_i = min(1/k, lambda * p_i)."""
    mp.mp.dps = 60
    top = max(x for x in logprobs if math.isfinite(x))
    probs = [mp.e ** (mp.mpf(x) - top) if math.isfinite(x) else mp.mpf(0) for x in logprobs]
    total = mp.fsum(probs)
    probs = [p / total for p in probs]
    cap = mp.mpf(1) / k
    low, high = mp.mpf(0), mp.mpf(10) ** 40
    for _ in range(400):
        mid = (low + high) / 2
        if mp.fsum(min(cap, mid * p) for p in probs) < 1:
            low = mid
        else:
            high = mid
    return [min(cap, high * p) for p in probs]


@pytest.mark.parametrize("case", range(300))
def test_capped_weights_match_the_water_filling_reference(case: int) -> None:
    rng = np.random.default_rng(case)
    k = int(rng.choice([2, 3, 4, 8]))
    n = int(rng.integers(k, 70))
    scale = float(rng.choice([0.1, 1.0, 5.0, 40.0]))  # flat to extremely peaked
    logprobs = sorted((rng.normal(size=n) * scale).tolist(), reverse=True)
    if case % 7 == 0 and n > k:
        logprobs[-1] = -math.inf  # a token with no mass
    weights = capped_weights(logprobs, k)
    assert sum(weights) == k * CAP_UNIT
    assert max(weights) <= CAP_UNIT and min(weights) >= 0
    reference = reference_shares(logprobs, k)
    for weight, share in zip(weights, reference, strict=True):
        assert abs(weight - float(share) * k * CAP_UNIT) <= n + 1  # rounding units only


def test_capped_weights_edge_cases() -> None:
    assert capped_weights([0.0, -1.0, -2.0, -3.0], 4) == [CAP_UNIT] * 4  # k candidates: uniform
    peaked = capped_weights([0.0, -60.0, -60.0, -60.0, -60.0], 2)
    assert peaked[0] == CAP_UNIT and sum(peaked[1:]) == CAP_UNIT  # the cap holds the top down
    flat = capped_weights([-1.0] * 10, 2)  # no token near the cap: plain proportions
    assert max(flat) - min(flat) <= 1
    # fewer than k tokens with mass: no distribution meets the cap on them, so the others share
    # it (each still at most 1/k: the bound never depends on the generator's numbers)
    assert capped_weights([0.0, -1.0, -math.inf], 3) == [CAP_UNIT] * 3
    with pytest.raises(ValueError, match="at least k"):
        capped_weights([0.0], 2)


def logprob_ranker(prompt: int, scale: float = 3.0, scored: bool = False):  # type: ignore[no-untyped-def]
    """A deterministic stand-in for a language model over SYNTHETIC_VOCAB: log-probs from a hash
    of the context, as a :class:`Ranking` (or a server's :class:`ScoredRanking`)."""

    @cache
    def values(context: tuple[int, ...]) -> np.ndarray:
        digest = hashlib.blake2b(repr((prompt, context)).encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        return (rng.normal(size=len(SYNTHETIC_VOCAB)) * scale).astype(np.float32)

    def rank(context: Sequence[int]) -> Ranking | ScoredRanking:
        row = values(tuple(context))
        ranked = Ranking(row)
        if scored:
            return ScoredRanking((t, float(row[t])) for t in ranked)
        return ranked

    return rank


@pytest.mark.parametrize(("k", "m", "support"), [(2, 3, 4), (2, 4, 17), (3, 3, 6), (4, 2, 17)])
@pytest.mark.parametrize("prompt", range(4))
def test_every_path_has_at_most_k_to_the_minus_m_and_the_set_is_prefix_free(
    k: int, m: int, support: int, prompt: int
) -> None:
    paths = list(enumerate_paths(logprob_ranker(prompt), SYNTHETIC_VOCAB, k, m, None, support))
    assert sum(chance for _, chance in paths) == 1
    assert max(chance for _, chance in paths) <= Fraction(1, k**m)
    strings = [data for data, _ in paths]
    assert len(set(strings)) == len(strings)
    for a, b in itertools.permutations(strings, 2):
        assert not b.startswith(a)
    # a server's ranking (ScoredRanking) gives the same paths
    served = enumerate_paths(
        logprob_ranker(prompt, scored=True), SYNTHETIC_VOCAB, k, m, None, support
    )
    assert list(served) == paths


def test_support_k_is_the_uniform_sampler_draw_for_draw() -> None:
    ranker = logprob_ranker(0)
    for i in range(50):
        seed = bytes([i]) * 32
        uniform = sample_prefix_free(ranker, SYNTHETIC_VOCAB, 3, 4, SecretStream(seed))
        same = sample_prefix_free(ranker, SYNTHETIC_VOCAB, 3, 4, SecretStream(seed), support=3)
        assert uniform == same
    assert set(enumerate_prefix_free(ranker, SYNTHETIC_VOCAB, 3, 2)) == {
        data for data, _ in enumerate_paths(ranker, SYNTHETIC_VOCAB, 3, 2, None, 3)
    }


def test_draws_follow_the_enumerated_probabilities() -> None:
    k, m, support = 2, 3, 6
    ranker = logprob_ranker(7, scale=2.0)
    paths = dict(enumerate_paths(ranker, SYNTHETIC_VOCAB, k, m, None, support))
    draws = 6000
    seen = Counter(
        sample_prefix_free(
            ranker, SYNTHETIC_VOCAB, k, m, SecretStream(i.to_bytes(32, "big")), support=support
        ).data
        for i in range(draws)
    )
    assert set(seen) <= set(paths)
    keys = sorted(paths, key=lambda s: -paths[s])
    expected = np.array([float(paths[s]) * draws for s in keys])
    observed = np.array([seen.get(s, 0) for s in keys])
    big = expected >= 5  # chi-square cells; the rest pooled
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    assert stats.chisquare(obs[keep], exp[keep]).pvalue > 1e-4


@pytest.mark.parametrize(("k", "m", "support"), [(2, 3, 17), (3, 2, 17)])
def test_the_adversary_who_knows_the_generator_hits_no_more_than_the_bound(
    k: int, m: int, support: int
) -> None:
    """A provider that never saw the key but runs the generator answers every query with the
    likeliest signature the sampler can draw (and, to be safe, every other path glued together):
    its hit rate stays within the model-free bound, and the test's false-positive rate at
    alpha stays below alpha."""
    trials, hits, false_positives, alpha = 4000, 0, 0, 0.05
    answers = {}
    for prompt in range(8):
        paths = sorted(
            enumerate_paths(logprob_ranker(prompt), SYNTHETIC_VOCAB, k, m, None, support),
            key=lambda p: -p[1],
        )
        answers[prompt] = paths[0][0].decode()  # the mode
    for trial in range(trials):
        prompt = trial % 8
        stream = SecretStream(trial.to_bytes(32, "big"))
        signature = sample_prefix_free(
            logprob_ranker(prompt), SYNTHETIC_VOCAB, k, m, stream, support=support
        ).text
        hit = signature in answers[prompt]
        hits += hit
        bound = log10_model_free_bound(
            [m * math.log2(k)], [len(answers[prompt])], [hit], min_signature_chars=[m]
        )
        false_positives += bound.log10_p <= math.log10(alpha)
    # one start position in a string as long as the shortest signature: P[hit] <= k^-m
    limit = trials / k**m
    assert hits <= limit + 4 * math.sqrt(limit)
    assert false_positives / trials <= alpha


def test_select_prefix_free_against_its_quadratic_definition() -> None:
    """The set-based walk keeps exactly the tokens the definition keeps: the first ``k``
    allowed, non-empty byte strings of which none prefixes another (equal ones included)."""

    def reference(ranked: Sequence[int], vocab: Sequence[bytes], k: int) -> list[int]:
        kept: list[int] = []
        for t in ranked:
            data = vocab[t]
            if data and not any(
                data.startswith(vocab[o]) or vocab[o].startswith(data) for o in kept
            ):
                kept.append(t)
                if len(kept) == k:
                    break
        return kept

    rng = np.random.default_rng(0)
    for _ in range(2000):
        vocab = [
            bytes(rng.choice(list(b"ab "), size=int(rng.integers(0, 5))).tolist())
            for _ in range(int(rng.integers(1, 60)))
        ]
        order = rng.permutation(len(vocab)).tolist()
        k = int(rng.integers(1, 70))
        assert select_prefix_free(order, vocab, k) == reference(order, vocab, k)
