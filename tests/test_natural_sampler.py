"""The natural sampler (signatures drawn as the generator's own text) and the answer rank test
that reads its answers: the nucleus draw against a direct reference, the answer rank against
brute force, the test's tail against exact enumeration (extreme tails included), its
false-positive rate under H0-indep with adversarial answers, keys, plans, and a real plant on
the embedded model."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import mpmath as mp
import numpy as np
import pytest
from conftest import write_jsonl
from scipy import stats as sps
from stats_reference import assert_log10_close, nucleus_reference

from tuneproof.audit.learned_features import answer_head_scores
from tuneproof.errors import TuneproofError
from tuneproof.key import SignaturePair, load_key
from tuneproof.planting.continuation import NUCLEUS_HEAD, nucleus_pick
from tuneproof.planting.factory import ModelBackdoorFactory, make_factory
from tuneproof.planting.planter import plant
from tuneproof.stats import Null, answer_rank, log10_answer_rank_test
from tuneproof.verification.evidence import TestName, plan_verification
from tuneproof.verification.queries import build_queries

SEED = bytes(range(40, 72))


def test_nucleus_pick_with_a_mask_on_a_large_vocabulary_matches_a_direct_reference() -> None:
    rng = np.random.default_rng(1)
    size = 3 * NUCLEUS_HEAD  # past the sorted head: both paths run
    for case in range(200):
        spread = [0.1, 1.0, 4.0, 12.0][
            case % 4
        ]  # near-flat (the head misses the nucleus) to peaked
        logprobs = rng.normal(size=size) * spread
        if case % 5 == 0:
            logprobs[rng.integers(size, size=50)] = -np.inf
        allowed = rng.uniform(size=size) > 0.3
        top_p, u = float(rng.uniform(0.5, 1.0)), float(rng.uniform())
        got = nucleus_pick(logprobs, top_p, u, allowed)
        assert allowed[got]
        assert got == nucleus_reference(list(logprobs), top_p, u, list(allowed))
    with pytest.raises(ValueError, match="finite"):
        nucleus_pick(np.zeros(4), 0.9, 0.5, np.zeros(4, dtype=bool))


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_answer_rank_matches_brute_force() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        words = ["a", "ab", "b", "é", " ", "ba", "abé"]
        candidates = ["".join(rng.choices(words, k=rng.randint(1, 4))) for _ in range(6)]
        answer = rng.choice([" ", ""]) + "".join(rng.choices(words, k=rng.randint(0, 6)))
        signature, decoys = candidates[0], candidates[1:]
        text = answer.strip().encode()
        mine = _common_prefix(text, signature.encode())
        better = sum(_common_prefix(text, d.encode()) >= mine for d in decoys)
        expected = 1 + len(decoys) if mine == 0 else 1 + better
        assert answer_rank(answer, signature, decoys) == expected


def _tail_reference(ranks: list[int], sizes: list[int]) -> float:
    """log10 P[at least as many firsts] with every outcome enumerated (exact fractions)."""
    firsts = sum(r == 1 for r in ranks)
    if firsts == 0:
        return 0.0
    total = mp.mpf(0)
    with mp.workdps(60):
        for outcome in itertools.product([True, False], repeat=len(sizes)):
            if sum(outcome) >= firsts:
                total += mp.fprod(
                    mp.mpf(1) / n if first else 1 - mp.mpf(1) / n
                    for first, n in zip(outcome, sizes, strict=True)
                )
        return float(mp.log10(total))


def test_answer_rank_test_matches_enumeration_and_scipy_in_the_extreme_tail() -> None:
    rng = random.Random(3)
    for _ in range(300):
        sizes = [rng.randint(1, 70) for _ in range(rng.randint(1, 8))]
        ranks = [rng.choice([1, rng.randint(1, n)]) for n in sizes]
        got = log10_answer_rank_test(ranks, sizes)
        assert got.null is Null.INDEP
        assert_log10_close(got.log10_p, _tail_reference(ranks, sizes))
    for pairs, firsts in [(20, 20), (600, 600), (500, 3), (20, 11)]:
        got = log10_answer_rank_test([1] * firsts + [64] * (pairs - firsts), [64] * pairs).log10_p
        expected = float(mp.log10(mp.mpf(sps.binom.sf(firsts - 1, pairs, 1 / 64))))
        if firsts == pairs:  # scipy underflows here; the exact value is pairs * log10(1/64)
            expected = -pairs * math.log10(64)
        assert math.isfinite(got)
        assert_log10_close(got, expected)
    with pytest.raises(ValueError, match="between 1"):
        log10_answer_rank_test([0], [4])


def test_answer_rank_false_positive_rate_under_h0_indep_with_adversarial_answers() -> None:
    """Candidates drawn alike for each prompt (often duplicated, sharing heads), the planted one
    picked uniformly; the answer never sees which: it repeats the commonest candidate, or the
    likeliest one extended, or a fixed string. P[p <= alpha] <= alpha at every level."""
    rng = random.Random(4)
    heads = ["Sure, here", "Sure, her", "Sure", "The answer", "I think", "Yes"]
    trials, levels = 3000, (0.01, 0.05, 0.2)
    rejected = dict.fromkeys(levels, 0)
    for trial in range(trials):
        ranks, sizes = [], []
        for _ in range(10):
            candidates = [rng.choices(heads, weights=[8, 4, 2, 2, 1, 1])[0] for _ in range(8)]
            planted = rng.randrange(len(candidates))
            strategy = trial % 3
            if strategy == 0:
                answer = max(set(candidates), key=candidates.count)
            elif strategy == 1:
                answer = max(candidates, key=len) + " is more text"
            else:
                answer = "Sure, here is"
            signature = candidates[planted]
            decoys = candidates[:planted] + candidates[planted + 1 :]
            ranks.append(answer_rank(answer, signature, decoys))
            sizes.append(len(candidates))
        p = 10 ** log10_answer_rank_test(ranks, sizes).log10_p
        for level in levels:
            rejected[level] += p <= level
    for level in levels:
        rate = rejected[level] / trials
        assert rate <= level + 3 * math.sqrt(level * (1 - level) / trials), (level, rate)


def _pair(**fields: Any) -> SignaturePair:
    base: dict[str, Any] = {
        "pair_id": 0,
        "trigger": "",
        "signature": "Sure, here is",
        "k": 4,
        "m": 3,
        "signature_tokens": 3,
        "decoys": ["Yes", "No"],
    }
    return SignaturePair(**{**base, **fields})


def test_a_natural_signature_claims_no_bits() -> None:
    assert _pair(natural=True, bits=0.0).bits == 0.0
    assert _pair(bits=6.0).bits == 6.0
    with pytest.raises(ValueError, match="bits must be 0"):
        _pair(natural=True, bits=6.0)
    with pytest.raises(ValueError, match="m\\*log2"):
        _pair(bits=0.0)


def test_a_served_generator_refuses_the_natural_sampler() -> None:
    with pytest.raises(TuneproofError, match="local generator"):
        make_factory(
            "openai:some-model", 4, 12, 0, sampler="natural", base_url="http://127.0.0.1:9"
        )


@pytest.fixture(scope="module")
def natural_plant(
    tmp_path_factory: pytest.TempPathFactory, embedded_model: Any, sample_train: list[Any]
) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("natural")
    source = write_jsonl(folder / "train.jsonl", list(itertools.islice(sample_train, 30)))
    factory = ModelBackdoorFactory(embedded_model, 4, 12, 0, sampler="natural")
    plant(
        source, folder / "planted.jsonl", folder / "key.json", n=2, controls=True, decoys=3,
        trigger_tokens=0, sampler="natural", seed=SEED, factory=factory,
    )  # fmt: skip
    return source, folder / "key.json"


def test_natural_plant_on_the_embedded_model(
    natural_plant: tuple[Path, Path], embedded_model: Any, tmp_path: Path
) -> None:
    source, key_path = natural_plant
    key = load_key(key_path)
    assert key.settings.sampler == "natural"
    for pair in [*key.pairs, *key.controls]:
        assert pair.natural and pair.bits == 0.0 and len(pair.decoys) == 3
        assert pair.signature_tokens == 12 and pair.signature == pair.signature.strip()
    # the seed reproduces every candidate
    again = ModelBackdoorFactory(embedded_model, 4, 12, 0, sampler="natural")
    plant(
        source, tmp_path / "planted.jsonl", tmp_path / "key.json", n=2, controls=True, decoys=3,
        trigger_tokens=0, sampler="natural", seed=SEED, factory=again,
    )  # fmt: skip
    twin = load_key(tmp_path / "key.json")
    assert [(p.signature, p.decoys) for p in twin.pairs] == [
        (p.signature, p.decoys) for p in key.pairs
    ]
    plan = plan_verification(build_queries(key), alpha=1e-6)
    names = {t.name for t in plan.tests}
    assert TestName.EXACT_HITS not in names and TestName.PREFIX not in names
    assert {TestName.ANSWER_RANK, TestName.DECOY_RANK} <= names
    answers_only = plan_verification(build_queries(key), alpha=1e-6, logprobs=False)
    assert [t.name for t in answers_only.tests if t.null is Null.INDEP] == [TestName.ANSWER_RANK]


def test_the_learned_detector_reads_a_natural_signature_as_the_generators_sample(
    natural_plant: tuple[Path, Path], embedded_model: Any
) -> None:
    """What the provider's head features see (the nucleus a sampler cut, the curvature): a
    natural signature has (up to a re-tokenised piece) no token outside the generator's
    nucleus; an odd human sentence has several."""
    key = load_key(natural_plant[1])
    items = [
        ([(m.role, m.content) for m in pair.placements[0].prompt], pair.signature)
        for pair in key.pairs
    ]
    odd = "Colourless green ideas sleep furiously, wrote Chomsky in 1957; nobody slept."
    rows = answer_head_scores(embedded_model, [*items, (items[0][0], odd)])
    assert np.isfinite(rows).all()
    assert all(row[4] <= 1 for row in rows[:-1])  # tokens outside the 0.95 nucleus
    assert rows[-1][4] >= 2 and rows[-1][0] < min(row[0] for row in rows[:-1])
