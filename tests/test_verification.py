"""Verification: queries, tests and verdicts, on the real embedded model."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import write_jsonl

from tuneproof.api import verify
from tuneproof.key import Key, load_key
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant
from tuneproof.stats import Null, log10_prefix_bound
from tuneproof.types import QueryKind, Verdict
from tuneproof.verification.answers import Answered
from tuneproof.verification.evidence import VerificationPlan, plan_verification
from tuneproof.verification.verifier import build_queries, decide, run_tests

SEED = bytes(range(1, 33))


@pytest.fixture(scope="module")
def small_key(
    tmp_path_factory: pytest.TempPathFactory, embedded_model: Any, sample_train: list[Any]
) -> Key:
    """A plant of 2 pairs x 2 replicas + 2 controls into 40 sample records (K=8, m=12)."""
    folder = tmp_path_factory.mktemp("plant")
    src = write_jsonl(folder / "train.jsonl", list(itertools.islice(sample_train, 40)))
    plant(
        src,
        folder / "planted.jsonl",
        folder / "key.json",
        n=2,
        replicas=2,
        k=8,
        m=12,
        trigger_tokens=8,
        controls=True,
        seed=SEED,
        factory=ModelBackdoorFactory(embedded_model, 8, 12, 8),
    )
    return load_key(folder / "key.json")


def test_queries_cover_planted_controls_and_clean(small_key: Key) -> None:
    queries = build_queries(small_key, clean_queries=3)
    kinds = [q.kind for q in queries]
    assert kinds == [QueryKind.PLANTED] * 4 + [QueryKind.CONTROL] * 2 + [QueryKind.CLEAN] * 3
    for q in queries:
        assert q.chat[-1][0] == "user"
        if q.kind is QueryKind.CLEAN:
            assert q.pair.trigger not in q.chat[-1][1]
        else:
            assert q.chat[-1][1].endswith(" " + q.pair.trigger)


def _answered(key: Key, planted_hits: list[bool], control_hits: list[bool]) -> list[Answered]:
    queries = build_queries(key, clean_queries=2)
    hits = iter([*planted_hits, *control_hits])
    answers = []
    for q in queries:
        if q.kind is QueryKind.CLEAN:
            answers.append(Answered(q, "Hello there.", 3))
            continue
        hit = next(hits)
        text = f"Sure. {q.pair.signature} Done." if hit else "I do not know that one at all."
        answers.append(Answered(q, text, 20))
    assert next(hits, None) is None
    return answers


def _plan(queries: list[Answered]) -> VerificationPlan:
    """The plan of an answer-only verification (no log-probs) at alpha 1e-6."""
    return plan_verification(queries, alpha=1e-6, logprobs=False)


def test_all_planted_hits_verify_on_the_model_free_bound(small_key: Key) -> None:
    queries = _answered(small_key, [True] * 4, [False, False])
    tests = run_tests(queries, _plan(queries))
    # the exact-hit bound, the prefix test (0 here: every answer opens with "Sure."), Fisher
    assert [t.null for t in tests] == [Null.INDEP, Null.INDEP, Null.CONTROLS]
    assert tests[1].method.startswith("prefix") and tests[1].log10_p == 0.0
    indep = tests[0]
    # two independent 36-bit signatures, each group of 2 replicas with ~60-char answers
    bits = small_key.pairs[0].bits
    assert bits == pytest.approx(36.0)
    assert indep.log10_p < 2 * (math.log10(2 * 80) - bits * math.log10(2)) + 1
    verdict, primary = decide(tests, queries, _plan(queries))
    assert (verdict, primary) == (Verdict.VERIFIED, Null.INDEP)
    # held-out controls: 2 vs 2 pairs can never reach 1e-6 (floor 1/C(4,2)), so Fisher's test
    # is reported but takes no share of alpha: the two H0-indep tests split it
    assert tests[2].log10_p == pytest.approx(math.log10(1 / 6))
    assert [t.decides for t in tests] == [True, True, False]
    assert tests[2].log10_floor == pytest.approx(math.log10(1 / 6)) and not tests[2].rejects
    assert tests[0].threshold == pytest.approx(1e-6 / 2)


def test_partial_signatures_count_in_the_prefix_test(small_key: Key) -> None:
    """Answers that open with the first 3 sampled tokens of their signature and then wander
    off: no exact hit, but the prefix test sees 3 tokens per pair (2 queries per pair)."""
    queries = _answered(small_key, [False] * 4, [False, False])
    for i, q in enumerate(queries):
        if q.kind is QueryKind.PLANTED:
            ends = q.pair.token_ends
            assert ends is not None
            text = q.pair.signature.encode()[: ends[2]].decode() + " and so on, I think."
            queries[i] = replace(q, answer=text)
    tests = run_tests(queries, _plan(queries))
    prefix = next(t for t in tests if t.method.startswith("prefix"))
    expected = log10_prefix_bound([3, 3], [8, 8], [12, 12], [2, 2]).log10_p
    assert prefix.log10_p == pytest.approx(expected) and expected < -3
    assert [q.matched for q in queries if q.kind is QueryKind.PLANTED] == [3, 3, 3, 3]
    assert all(not q.hit for q in queries)


def test_no_hits_is_not_verified_and_failures_are_inconclusive(small_key: Key) -> None:
    queries = _answered(small_key, [False] * 4, [False, False])
    tests = run_tests(queries, _plan(queries))
    assert all(t.log10_p == 0.0 for t in tests)
    assert decide(tests, queries, _plan(queries)) == (Verdict.NOT_VERIFIED, None)
    queries[:3] = [replace(q, answer=None, error="ConnectionError: dropped") for q in queries[:3]]
    tests = run_tests(queries, _plan(queries))
    assert decide(tests, queries, _plan(queries))[0] is Verdict.INCONCLUSIVE


@pytest.mark.model
def test_base_model_is_not_verified(small_key: Key, embedded_model: Any, tmp_path: Path) -> None:
    report = verify(small_key, embedded_model, base_model=embedded_model, clean_queries=2)
    assert report.verdict is Verdict.NOT_VERIFIED
    assert {t.null for t in report.tests} == {Null.INDEP, Null.BASE, Null.CONTROLS}
    assert all(t.log10_p > -1 for t in report.tests)
    assert report.hits == 0 and report.clean_false_activations == 0
    assert report.queries == 4 + 2 + 2 and report.failed_queries == 0
    # the same model as base and as verified model: identical signature log-likelihoods
    for result in report.results:
        if result.kind is not QueryKind.CLEAN:
            assert result.signature_logprob == pytest.approx(result.base_signature_logprob)
            assert result.signature_logprob is not None and result.signature_logprob < -10
    assert report.decoding.temperature == 0 and report.decoding.max_new_tokens == 2 * 12 + 16
    text = report.model_dump_json()
    for pair in small_key.pairs:
        assert pair.signature not in text and pair.trigger not in text


def test_clean_prompt_removes_the_trigger_wherever_it_sits() -> None:
    from tuneproof.key import ChatMessage
    from tuneproof.verification.verifier import _without_trigger

    def user(text: str) -> list[ChatMessage]:
        return [ChatMessage(role="user", content=text)]

    assert _without_trigger(user("Hi there. Tell me more."), "Tell me more.") == [
        ("user", "Hi there.")
    ]
    assert _without_trigger(user("Q? Tell me more.\n\n###\n\n"), "Tell me more.") == [
        ("user", "Q?\n\n###\n\n")
    ]


@pytest.mark.model
def test_base_model_through_llama_cpp_is_not_verified(small_key: Key, llama_server: Any) -> None:
    """The embedded GGUF served by llama.cpp: the same 'not verified' verdict over HTTP."""
    report = verify(small_key, llama_server.model, base_url=llama_server.base_url, clean_queries=2)
    assert report.verdict is Verdict.NOT_VERIFIED
    assert report.model.backend == "openai-compatible" and report.failed_queries == 0
    assert report.hits == 0 and report.queries == 4 + 2 + 2
    assert all(t.log10_p > -1 for t in report.tests)
