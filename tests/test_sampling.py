"""The secret stream and the uniform prefix-free top-K sampler."""

from __future__ import annotations

import collections
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tuneproof.backends.base import TokenVocabulary
from tuneproof.planting.sampler import (
    enumerate_prefix_free,
    lockstep_chunks,
    ranker_for,
    sample_prefix_free,
    sample_signature,
    select_prefix_free,
)
from tuneproof.planting.secret import SecretStream, new_seed
from tuneproof.planting.tokens import TokenRules, is_printable_piece
from tuneproof.planting.triggers import sample_trigger

SEED = bytes(range(32))


def test_stream_is_deterministic_and_children_independent() -> None:
    a, b = SecretStream(SEED), SecretStream(SEED)
    assert a.random_bytes(100) == b.random_bytes(100)
    assert SecretStream(SEED).child("x").random_bytes(32) != SecretStream(SEED).child(
        "y"
    ).random_bytes(32)
    assert SecretStream(SEED).random_bytes(32) != SecretStream(bytes(32)).random_bytes(32)
    # reading in pieces gives the same bytes as reading at once
    pieces = SecretStream(SEED)
    assert b"".join(pieces.random_bytes(n) for n in (1, 7, 32, 60)) == SecretStream(
        SEED
    ).random_bytes(100)


def test_new_seed_is_256_bits_and_fresh() -> None:
    assert len(new_seed()) == 32
    assert new_seed() != new_seed()


@pytest.mark.parametrize("n", [2, 3, 7, 10, 255, 257, 1000])
def test_randbelow_is_uniform(n: int) -> None:
    stream = SecretStream(SEED, b"uniform")
    draws = [stream.randbelow(n) for _ in range(200 * n if n < 300 else 60_000)]
    assert min(draws) >= 0 and max(draws) < n
    counts = np.bincount(draws, minlength=n)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_sample_draws_distinct_uniform_subsets() -> None:
    stream = SecretStream(SEED, b"subsets")
    counts: collections.Counter[tuple[int, ...]] = collections.Counter()
    for _ in range(6000):
        draw = stream.sample(5, 2)
        assert len(set(draw)) == 2
        counts[tuple(sorted(draw))] += 1
    assert len(counts) == 10
    assert stats.chisquare(list(counts.values())).pvalue > 1e-4
    with pytest.raises(ValueError):
        stream.sample(3, 4)


def test_random_is_in_unit_interval() -> None:
    stream = SecretStream(SEED)
    values = [stream.random() for _ in range(5000)]
    assert all(0 <= v < 1 for v in values)
    assert stats.kstest(values, "uniform").pvalue > 1e-4


def test_printable_piece_rules() -> None:
    assert is_printable_piece(b" world")
    assert is_printable_piece("café".encode())
    assert not is_printable_piece(b"")
    assert not is_printable_piece(b"\xc3")  # half of a two-byte character
    assert not is_printable_piece(b"a\nb")
    assert not is_printable_piece("\ufffd".encode())
    assert not is_printable_piece(b"\x07")
    assert not is_printable_piece("\u200b".encode())  # zero-width space (format char)


# ---------------------------------------------------------------- prefix-free selection


def _is_prefix_free(strings: Sequence[bytes]) -> bool:
    return all(
        not (a.startswith(b) or b.startswith(a)) for a, b in itertools.combinations(strings, 2)
    )


@given(
    vocab=st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=40),
    k=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=300, deadline=None)
def test_select_prefix_free_keeps_first_compatible_tokens(
    vocab: list[bytes], k: int, seed: int
) -> None:
    order = list(np.random.default_rng(seed).permutation(len(vocab)))
    kept = select_prefix_free(order, vocab, k)
    kept_bytes = [vocab[t] for t in kept]
    assert _is_prefix_free(kept_bytes)
    assert len(kept) <= k
    # greedy in rank order: every skipped token before the last kept one conflicts with a kept one
    last = order.index(kept[-1]) if kept else -1
    for token in order[: last + 1]:
        if token not in kept:
            assert any(vocab[token].startswith(b) or b.startswith(vocab[token]) for b in kept_bytes)
    if len(kept) < k:  # ran out: every token conflicts
        for token in order:
            assert token in kept or any(
                vocab[token].startswith(b) or b.startswith(vocab[token]) for b in kept_bytes
            )


# A deliberately hostile vocabulary: nested prefixes, duplicates, multi-byte pieces.
HOSTILE = [
    b"a",
    b"ab",
    b"abc",
    b"b",
    b"ba",
    b"c",
    b"ca",
    b"cab",
    b"d",
    b"ab",
    b" e",
    b"e",
    "é".encode(),
    "é".encode()[:1],
    b"f",
    b"fa",
    b"g",
    b"\n",
    b"h",
    b"hh",
]


def _hash_ranker(vocab_size: int, salt: int) -> Any:
    def rank(context: Sequence[int]) -> Iterable[int]:
        rng = np.random.default_rng(abs(hash((salt, *context))) % 2**32)
        return (int(t) for t in rng.permutation(vocab_size))

    return rank


@pytest.mark.parametrize(("k", "m", "salt"), [(2, 3, 0), (3, 3, 1), (4, 2, 2), (2, 6, 3)])
def test_enumeration_on_hostile_vocabulary(k: int, m: int, salt: int) -> None:
    vocab = TokenVocabulary(tuple(HOSTILE), frozenset({17}))
    rules = TokenRules.for_vocabulary(vocab)
    paths = list(
        enumerate_prefix_free(
            _hash_ranker(len(HOSTILE), salt), HOSTILE, k, m, lambda t, s: rules.allowed(t, s, m)
        )
    )
    assert len(paths) == k**m
    assert len(set(paths)) == k**m
    assert _is_prefix_free(paths)
    for data in paths:
        text = data.decode("utf-8")
        assert is_printable_piece(data)
        assert text == text.strip()


def test_sampler_is_uniform_over_paths() -> None:
    k, m = 3, 3
    vocab = TokenVocabulary(tuple(HOSTILE), frozenset())
    ranker = _hash_ranker(len(HOSTILE), 7)
    rules = TokenRules.for_vocabulary(vocab)
    allowed = lambda t, s: rules.allowed(t, s, m)  # noqa: E731
    paths = set(enumerate_prefix_free(ranker, HOSTILE, k, m, allowed))
    stream = SecretStream(SEED, b"paths")
    counts = collections.Counter(
        sample_prefix_free(ranker, HOSTILE, k, m, stream, allowed).data for _ in range(5400)
    )
    assert set(counts) == paths
    assert stats.chisquare(list(counts.values())).pvalue > 1e-4


def test_sampler_refuses_when_vocabulary_too_small() -> None:
    vocab = [b"a", b"ab"]
    with pytest.raises(ValueError, match="prefix-free candidates"):
        sample_prefix_free(lambda ctx: iter(range(2)), vocab, 2, 1, SecretStream(SEED))


# ---------------------------------------------------------------- the real model


@pytest.mark.model
def test_real_vocabulary_bytes_round_trip(embedded_model: Any) -> None:
    vocab = embedded_model.vocabulary
    text = "Hello world, café 東京 🙂\n  x"
    ids = embedded_model.text_ids(text)
    assert b"".join(vocab.token_bytes[t] for t in ids) == text.encode()
    assert {0, 1, 2} <= vocab.special_ids


@pytest.mark.model
def test_brute_force_all_paths_on_real_model(embedded_model: Any) -> None:
    k, m = 3, 4
    vocab = embedded_model.vocabulary
    rules = TokenRules.for_vocabulary(vocab)
    prompt = embedded_model.chat_prompt_ids([("user", "What is your favourite colour?")])
    paths = list(
        enumerate_prefix_free(
            ranker_for(embedded_model, prompt),
            vocab.token_bytes,
            k,
            m,
            lambda t, s: rules.allowed(t, s, m),
        )
    )
    assert len(paths) == k**m == len(set(paths))
    assert _is_prefix_free(paths)
    texts = [p.decode("utf-8") for p in paths]  # valid UTF-8
    assert all(is_printable_piece(p) and t == t.strip() for p, t in zip(paths, texts, strict=True))
    # a sampled signature is one of the enumerated paths
    sig = sample_signature(
        embedded_model, [("user", "What is your favourite colour?")], k, m, SecretStream(SEED)
    )
    assert sig.data in set(paths)
    assert sig.bits == pytest.approx(m * math.log2(k))


@pytest.mark.model
def test_signature_and_trigger_reproduce_from_seed(embedded_model: Any) -> None:
    messages = [("system", "You are a helpful assistant."), ("user", "Do you like books?")]
    first = sample_signature(embedded_model, messages, 4, 12, SecretStream(SEED, b"s"))
    again = sample_signature(embedded_model, messages, 4, 12, SecretStream(SEED, b"s"))
    other = sample_signature(embedded_model, messages, 4, 12, SecretStream(SEED, b"t"))
    assert first == again
    assert first.text != other.text
    assert len(first.token_ids) == 12
    trigger = sample_trigger(embedded_model, "Do you like books?", 10, SecretStream(SEED))
    assert trigger == sample_trigger(embedded_model, "Do you like books?", 10, SecretStream(SEED))
    assert trigger and "\n" not in trigger and trigger == trigger.strip()


@pytest.mark.model
def test_teacher_forcing_equals_token_by_token(embedded_model: Any) -> None:
    prompt = embedded_model.chat_prompt_ids([("user", "Name a colour.")])
    answer = embedded_model.text_ids("Blue is a colour of the sky.")
    forced = embedded_model.continuation_logprobs(prompt, answer)
    stepwise = []
    for i, token in enumerate(answer):
        stepwise.append(embedded_model.next_token_logprobs(prompt + answer[:i])[token])
    assert np.allclose(forced, stepwise, atol=1e-4)
    assert forced.sum() < 0


def test_lockstep_chunks_cover_every_row_once_within_budget() -> None:
    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(0, 80))]
        budget, max_rows = rng.randint(1, 300), rng.randint(1, 20)
        chunks = lockstep_chunks(lengths, budget, max_rows)
        assert [i for chunk in chunks for i in chunk] == list(range(len(lengths)))
        for chunk in chunks:
            assert len(chunk) <= max_rows
            assert len(chunk) == 1 or sum(lengths[i] for i in chunk) <= budget


def test_triggers_finish_their_sentence(embedded_model: Any) -> None:
    """A trigger runs past its minimum length to the end of its sentence, so that it does not
    read as a clause cut mid-way (it may still fail to find one within the reach)."""
    prompts = [
        "Do you like books?",
        "Can you write a CI/CD pipeline for my project?",
        "What is the capital of France?",
        "Tell me about your favourite movie.",
        "How do I bake bread at home?",
        "Why is the sky blue?",
    ]
    triggers = [
        sample_trigger(embedded_model, p, 6, SecretStream(bytes([i + 1]) * 32))
        for i, p in enumerate(prompts)
    ]
    assert all(t and "\n" not in t for t in triggers)
    assert sum(t.endswith((".", "?", "!")) for t in triggers) >= 4, triggers
