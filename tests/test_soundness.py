"""No false "verified": the soundness holes of the verdict path, each with a model that never
saw the key (issue 11). Real plants of real sample records; the null models are the smallest
stand-ins that produce exactly the fault (NaN scores, constant scores, a base model that makes
the signatures unlikely), since a real model produces them only by accident. The gauntlet
(benchmarks/null_gauntlet.py) runs real models against hundreds of keys."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tuneproof.api import verify
from tuneproof.key import Key, load_key
from tuneproof.planting.planter import plant
from tuneproof.planting.sampler import SampledSequence
from tuneproof.planting.secret import SecretStream
from tuneproof.report.wording import verdict_sentence
from tuneproof.stats import Null, decoy_rank
from tuneproof.types import ModelIdentity, QueryKind, Verdict
from tuneproof.verification.evidence import TestName, plan_verification
from tuneproof.verification.queries import build_queries

SEED = bytes(range(7, 39))
K, M = 8, 12


class WordFactory:
    """Triggers and prefix-free signatures without a model: token i of a signature is one of K
    distinct words for step i, picked with the secret stream (uniform over K^m strings).
    Records which prompts were drawn for, and by which path (batched or one at a time)."""

    def __init__(self, k: int = K, m: int = M) -> None:
        self.k, self.m = k, m
        self.identity = ModelIdentity(name="words", backend="test", source="-")
        self.batched: list[Any] = []
        self.single: list[Any] = []

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        return f"Please answer briefly, case {stream.randbelow(10**6)}."

    def _draw(self, stream: SecretStream) -> SampledSequence:
        words = [f" w{step}x{stream.randbelow(self.k)}" for step in range(self.m)]
        text = "".join(words).strip()
        ends, at = [], 0
        for i, word in enumerate(words):
            at += len((word.strip() if i == 0 else word).encode())
            ends.append(at)
        return SampledSequence(
            tuple(range(self.m)), text.encode(), text, self.k, self.m, tuple(ends)
        )

    def signature(self, messages: Sequence[Any], stream: SecretStream) -> SampledSequence:
        self.single.append([(m.role, m.content) for m in messages])
        return self._draw(stream)

    def signature_sets(
        self, groups: Sequence[tuple[Sequence[Any], Sequence[SecretStream]]], progress: Any = None
    ) -> list[list[SampledSequence]]:
        out = []
        for messages, streams in groups:
            self.batched.append([(m.role, m.content) for m in messages])
            out.append([self._draw(s) for s in streams])
        return out

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)


def _plant(folder: Path, source: Path, factory: WordFactory | None = None, **options: Any) -> Key:
    settings: dict[str, Any] = {"n": 20, "replicas": 1, "controls": True, "decoys": 63}
    settings.update(options)
    factory = factory or WordFactory(settings.pop("k", K), settings.pop("m", M))
    plant(
        source, folder / "planted.jsonl", folder / "key.json",
        k=factory.k, m=factory.m, trigger_tokens=6, factory=factory, seed=SEED, **settings,
    )  # fmt: skip
    return load_key(folder / "key.json")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory, sample_train: list[Any]) -> Key:
    """20 planted pairs + 20 controls, 63 decoys each, in 60 real sample records."""
    from conftest import write_jsonl

    folder = tmp_path_factory.mktemp("soundness")
    source = write_jsonl(folder / "train.jsonl", sample_train[:60])
    return _plant(folder, source)


class NullModel:
    """A model that never saw the key: fixed answers, and log-likelihoods from ``score``."""

    def __init__(self, score: Any, answer: Any = "I am not sure about that one.") -> None:
        self.identity = ModelIdentity(name="null", backend="test", source="-")
        self.capabilities = {"generate": True, "logprob": True}
        self.decoding: dict[str, float] = {}
        self.score, self.answer = score, answer
        self.scored: list[list[str]] = []

    def generate(
        self, chats: Sequence[Any], max_new_tokens: int, batch_size: int = 8
    ) -> list[tuple[str, int]]:
        out = []
        for chat in chats:
            text = self.answer(chat) if callable(self.answer) else self.answer
            out.append((text, 12))
        return out

    def logprob(
        self, chats: Sequence[Any], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        self.scored.append(list(continuations))
        return [float(self.score(text)) for text in continuations]


# --------------------------------------------------------------- 1. non-finite scores


def test_a_nan_score_ranks_last_and_a_nan_decoy_counts_against() -> None:
    nan, inf = math.nan, math.inf
    assert decoy_rank(nan, [-50.0, -60.0, -70.0]) == 4  # was 1: verified at 10^-36.1
    assert decoy_rank(-inf, [-50.0]) == 2 and decoy_rank(inf, [-50.0]) == 2
    assert decoy_rank(-10.0, [nan, -60.0]) == 2
    assert decoy_rank(-10.0, [-inf, inf]) == 3
    # ties within 1e-3 nats (above batching noise, ~1e-4) count against the model
    assert decoy_rank(-10.0, [-10.0005]) == 2 and decoy_rank(-10.0, [-10.002]) == 1


@pytest.mark.parametrize("name", ["nan", "nan-10%", "-inf", "constant"])
def test_broken_scores_are_never_evidence(key: Key, name: str) -> None:
    """All-NaN scores (a diverged fine-tune) were 'verified' at 10^-36.1 through the decoy rank
    test; 10% NaN gave 127x the nominal false-positive rate; -inf and constant scores tie."""
    rng = random.Random(3)
    score = {
        "nan": lambda text: math.nan,
        "nan-10%": lambda text: math.nan if rng.random() < 0.1 else -rng.uniform(20, 80),
        "-inf": lambda text: -math.inf,
        "constant": lambda text: -5.0,
    }[name]
    report = verify(key, NullModel(score))
    assert report.verdict is Verdict.NOT_VERIFIED
    decoys = next(t for t in report.tests if t.method.startswith("decoy rank"))
    rank_sum = next(
        t for t in report.tests if t.method.startswith("rank-sum") or "Mann" in t.method
    )
    if name != "nan-10%":
        assert decoys.log10_p == 0.0 and rank_sum.log10_p == 0.0  # the worst possible ranks
    else:
        assert decoys.log10_p > -4 and rank_sum.log10_p > -4
    if name != "constant":
        assert any("not finite" in line for line in report.not_proven)


def test_a_base_model_with_infinite_scores_does_not_crash_h0_base(key: Key) -> None:
    """A hit with a base log-prob of -inf gave p = 0 and a validation crash."""
    first = key.pairs[0]
    model = NullModel(lambda text: -30.0, answer=lambda chat: f"{first.signature}")
    report = verify(key, model, base_model=NullModel(lambda text: -math.inf))
    base = next(t for t in report.tests if t.null is Null.BASE)
    assert math.isfinite(base.log10_p) and not base.decides and not base.rejects


# --------------------------------------------------------------- 2. H0-base never decides


def test_h0_base_does_not_decide_a_greedy_verdict(key: Key) -> None:
    """One hit in a 100,000-character answer is weak H0-indep evidence (bound ~3e-5), but a
    base model that finds every signature unlikely (-100 nats) puts H0-base at ~10^-42: the
    old verdict said "trained on your planted data" on H0-base alone."""
    first = key.pairs[0]
    long_answer = "x" * 50_000 + " " + first.signature + " " + "y" * 50_000

    def answer(chat: Any) -> str:
        return long_answer if first.trigger in chat[-1][1] else "No idea."

    report = verify(key, NullModel(lambda t: -60.0, answer), base_model=NullModel(lambda t: -100.0))
    base = next(t for t in report.tests if t.null is Null.BASE)
    assert base.log10_p < -30 and not base.rejects and not base.decides
    assert report.verdict is Verdict.NOT_VERIFIED
    assert report.correction == len([t for t in report.tests if t.decides])
    assert all(t.threshold == pytest.approx(1e-6 / report.correction) for t in report.tests)
    assert any("reported only" in line for line in report.not_proven)


# --------------------------------------------------------------- 3. Bonferroni over reachable


def test_only_tests_that_can_reach_their_share_of_alpha_count(key: Key) -> None:
    queries = build_queries(key)
    plan = plan_verification(queries, alpha=1e-6, logprobs=True)
    floors = {t.name: t.log10_floor for t in plan.tests}
    # 20 + 20 pairs: Fisher and the exact rank sum both reach 1/C(40, 20)
    assert floors[TestName.FISHER] == pytest.approx(-math.log10(math.comb(40, 20)))
    assert floors[TestName.RANK_SUM] == pytest.approx(-math.log10(math.comb(40, 20)))
    assert floors[TestName.DECOY_RANK] == pytest.approx(-20 * math.log10(64))
    assert len(plan.counted) == 5 and plan.per_test_alpha == pytest.approx(2e-7)
    # the same key's first 10 pairs and 10 controls: 1/C(20, 10) = 10^-5.27 cannot reach
    fewer = [
        q
        for q in queries
        if (q.kind is QueryKind.PLANTED and q.pair.pair_id < 10)
        or (q.kind is QueryKind.CONTROL and q.pair.pair_id < 30)
    ]
    plan = plan_verification(fewer, alpha=1e-6, logprobs=True)
    counted = {t.name for t in plan.counted}
    assert counted == {TestName.EXACT_HITS, TestName.PREFIX, TestName.DECOY_RANK}
    assert plan.per_test_alpha == pytest.approx(1e-6 / 3)
    assert all("smallest attainable" in (t.note or "") for t in plan.unreachable())


def test_a_key_that_can_never_verify_is_inconclusive_and_warned_at_plant_time(
    tmp_path: Path, sample_train: list[Any]
) -> None:
    from conftest import write_jsonl

    source = write_jsonl(tmp_path / "train.jsonl", sample_train[:30])
    factory = WordFactory(k=2, m=4)
    plant(
        source, tmp_path / "planted.jsonl", tmp_path / "key.json", n=1, replicas=1, k=2, m=4,
        trigger_tokens=6, controls=True, decoys=20, factory=factory, seed=SEED,
    )  # fmt: skip
    from tuneproof.verification.key_warnings import key_warnings as plant_warnings

    key = load_key(tmp_path / "key.json")
    warnings = plant_warnings(key)
    assert any("21 candidates per pair exceed the K^m = 16" in w for w in warnings)
    assert any("no test can reach alpha = 1e-06" in w for w in warnings)
    perfect = NullModel(lambda text: -1.0, answer=lambda chat: key.pairs[0].signature)
    report = verify(key, perfect)
    assert report.verdict is Verdict.INCONCLUSIVE
    assert "no test can reach the threshold" in verdict_sentence(report)


# --------------------------------------------------------------- 4 and 5. looks and headline


def _learnt(key: Key, learnt: set[int]) -> NullModel:
    """Answers the signature of the planted pairs in ``learnt`` (and nothing else)."""
    by_trigger = {p.trigger: p for p in key.pairs if p.pair_id in learnt}

    def answer(chat: Any) -> str:
        for trigger, pair in by_trigger.items():
            if chat[-1][1].endswith(trigger):
                return pair.signature
        return "Not sure."

    return NullModel(lambda text: -40.0, answer)


@pytest.mark.parametrize("learnt", [1, 2, 3, 5, 20])
def test_a_sequential_run_that_stops_early_reports_what_the_end_would(
    key: Key, learnt: int
) -> None:
    chosen = set(random.Random(learnt).sample(range(20), learnt))
    sequential = verify(key, _learnt(key, chosen), sequential=True)
    one_shot = verify(key, _learnt(key, chosen))
    if sequential.stopped_early:
        assert sequential.verdict is Verdict.VERIFIED
    if sequential.verdict is Verdict.VERIFIED:
        assert one_shot.verdict is Verdict.VERIFIED
    assert sequential.looks == sum(
        1 for r in sequential.results if r.kind is QueryKind.PLANTED
    ) or (sequential.stopped_early and sequential.looks == 20)
    deciding = [t for t in sequential.tests if t.decides]
    assert sequential.correction == len(deciding) * 20
    assert all(t.threshold == pytest.approx(1e-6 / sequential.correction) for t in deciding)


def test_the_headline_p_value_is_the_corrected_one(key: Key) -> None:
    report = verify(key, _learnt(key, {0, 1, 2, 3}))
    assert report.verdict is Verdict.VERIFIED
    deciding = [t for t in report.tests if t.decides]
    raw = min(t.log10_p for t in deciding)
    assert report.log10_p_corrected == pytest.approx(raw + math.log10(report.correction))
    sentence = verdict_sentence(report)
    assert f"corrected for the {report.correction} looks and tests" in sentence
    exponent = math.floor(-report.log10_p_corrected)
    assert f"10^-{exponent}" in sentence


# ------------------------------------------------- 6 and 7. exchangeable by construction


def test_candidates_are_scored_in_an_order_blind_to_the_planted_one(key: Key) -> None:
    model = NullModel(lambda text: -50.0)
    verify(key, model)
    decoy_calls = [call for call in model.scored if len(call) == 20 * 64]
    assert len(decoy_calls) == 1
    for at, pair in zip(range(0, 20 * 64, 64), key.pairs, strict=True):
        sent = decoy_calls[0][at : at + 64]
        assert sent == sorted([pair.signature, *pair.decoys])
    # the H0-controls scores: planted and held-out signatures interleaved, by text
    controls_call = next(call for call in model.scored if len(call) == 40)
    assert controls_call == sorted(p.signature for p in [*key.pairs, *key.controls])


def test_controls_are_drawn_and_queried_like_planted_pairs(
    tmp_path: Path, sample_train: list[Any]
) -> None:
    from conftest import write_jsonl

    source = write_jsonl(tmp_path / "train.jsonl", sample_train[:60])
    factory = WordFactory()
    key = _plant(tmp_path, source, factory, n=5, replicas=3, decoys=7)
    assert not factory.single  # every pair, planted or held out, by the batched draw
    drawn_for = factory.batched
    assert len(drawn_for) == 10
    for pair in key.controls:
        assert len(pair.decoys) == 7
        assert [(m.role, m.content) for m in pair.control_prompt or []] in drawn_for
    for pair in key.pairs:
        assert len(pair.placements) == 3 and len(pair.decoys) == 7
        # replica 0 is the copy the trigger and signature were drawn for (what the H0-controls
        # tests query, as they query a control's prompt); the others follow by position
        anchor = [(m.role, m.content) for m in pair.placements[0].prompt]
        assert anchor == drawn_for[pair.pair_id]
        rest = pair.placements[1:]
        assert [p.position for p in rest] == sorted(p.position for p in rest)
