"""The prefix-free sampler that draws signatures: uniform top-K, or the generator's own
distribution capped at 1/K.

Signatures are drawn by :func:`sample_prefix_free`: at each of ``m`` steps it keeps the
``support`` most probable tokens that are printable on their own and mutually non-prefix as byte
strings (the rules of :mod:`tuneproof.planting.tokens`), then picks one of them with the secret
stream (:mod:`tuneproof.planting.secret`):

- ``support == k`` (the uniform sampler of keys before the natural signatures): uniformly, so
  every path has probability exactly ``k**-m``;
- ``support > k`` (the capped sampler): in proportion to the generator's probabilities
  renormalised over the kept tokens, with no token above ``1/k``
  (:mod:`tuneproof.planting.capped`: water-filling in exact integer weights). The signature
  reads like the generator's own sample where the generator is unsure and is flattened only
  where it is confident, and still no path has probability above ``k**-m``.

Either way the possible signatures are distinct, valid UTF-8, and none is a prefix of another,
so the model-free p-value (docs/statistics.md) holds with the same bound ``k**-m``.

This module never imports torch: models reach it through the small :class:`NextTokenModel`
protocol.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.backends.base import NextTokenModel
from tuneproof.planting.capped import pick, step_weights
from tuneproof.planting.natural import sample_natural_lockstep
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.tokens import TokenRules

MAX_CONTEXT_TOKENS = 768
"""The generator sees at most this many tokens of a prompt (the end of it): enough for style,
and a 50 MB record never reaches the model whole."""
MAX_TRIGGER_CONTEXT_CHARS = 2000
"""Characters of a prompt (its end) that a generator is shown, before tokenizing."""


def select_prefix_free(
    ranked_token_ids: Iterable[int],
    token_bytes: Sequence[bytes],
    k: int,
    is_allowed: Callable[[int], bool] | None = None,
) -> list[int]:
    """Walk tokens in rank order and keep the first ``k`` allowed ones whose byte strings are
    mutually non-prefix (no kept string is a prefix of another, equal strings included).

    Returns the kept token ids in rank order; fewer than ``k`` only if the ranking runs out.
    """
    kept: list[int] = []
    kept_bytes: set[bytes] = set()
    prefixes: set[bytes] = set()  # every non-empty prefix of a kept string, itself included
    for token_id in ranked_token_ids:
        if is_allowed is not None and not is_allowed(token_id):
            continue
        data = token_bytes[token_id]
        if not data or data in prefixes:  # empty, or a prefix of (or equal to) a kept string
            continue
        if any(data[:i] in kept_bytes for i in range(1, len(data))):  # a kept one prefixes it
            continue
        kept.append(token_id)
        kept_bytes.add(data)
        prefixes.update(data[:i] for i in range(1, len(data) + 1))
        if len(kept) == k:
            break
    return kept


@dataclass(frozen=True)
class SampledSequence:
    """A signature drawn by the prefix-free sampler: its tokens, bytes, text and entropy.

    ``bits = m * log2(k)``: the signature is uniform over ``k**m`` prefix-free strings.
    """

    token_ids: tuple[int, ...]
    data: bytes
    text: str
    k: int
    m: int
    token_ends: tuple[int, ...] = ()
    natural: bool = False
    """Drawn by the natural sampler (:mod:`tuneproof.planting.natural`): no bound on its
    chance, so ``bits`` is 0."""

    @property
    def bits(self) -> float:
        return 0.0 if self.natural else self.m * math.log2(self.k)


Ranker = Callable[[Sequence[int]], Iterable[int]]
"""Context token ids -> candidate ids by decreasing probability. The capped sampler
(``support > k``) needs a ranking with a ``logprob(token_id)`` method (:class:`Ranking`,
:class:`ScoredRanking`); the uniform one reads the order only."""


def _drawn(
    tokens: Sequence[int], token_bytes: Sequence[bytes], k: int, m: int, natural: bool = False
) -> SampledSequence:
    data = b"".join(token_bytes[t] for t in tokens)
    ends = tuple(itertools.accumulate(len(token_bytes[t]) for t in tokens))
    return SampledSequence(tuple(tokens), data, data.decode("utf-8"), k, m, ends, natural)


def sample_prefix_free(
    ranker: Ranker,
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    stream: SecretStream,
    is_allowed: Callable[[int, int], bool] | None = None,
    support: int | None = None,
) -> SampledSequence:
    """Draw ``m`` tokens; at each step keep the top-``support`` (default ``k``) prefix-free
    allowed tokens that ``ranker`` (context token ids -> ids in decreasing probability) proposes
    and :func:`pick` one: uniformly when ``support == k``, else capped at ``1/k``.

    ``is_allowed(token_id, step)`` filters candidates. The context passed to ``ranker`` is the
    tokens drawn so far (the caller closes over any prompt). Raises ``ValueError`` when fewer than
    ``k`` candidates exist at some step, since the entropy guarantee would then not hold.
    """
    return sample_prefix_free_lockstep(
        lambda rows: [ranker(rows[0])], token_bytes, k, m, [stream], is_allowed, support
    )[0]


def sample_prefix_free_lockstep(
    batch_ranker: Callable[[Sequence[Sequence[int]]], Sequence[Iterable[int]]],
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    streams: Sequence[SecretStream],
    is_allowed: Callable[[int, int], bool] | None = None,
    support: int | None = None,
) -> list[SampledSequence]:
    """Draw one sequence per stream, all in lockstep: ``batch_ranker`` gets every sequence's
    tokens so far and returns one ranking per sequence (a batched forward pass). Each sequence
    is drawn exactly as by :func:`sample_prefix_free` with its own stream."""
    support = k if support is None else support
    if k < 2 or m < 1 or support < k:
        raise ValueError("the sampler needs k >= 2, m >= 1 and support >= k")
    drawn: list[list[int]] = [[] for _ in streams]
    for step in range(m):
        allowed = None if is_allowed is None else (lambda t, s=step: is_allowed(t, s))
        for tokens, ranked, stream in zip(drawn, batch_ranker(drawn), streams, strict=True):
            choices = select_prefix_free(ranked, token_bytes, support, allowed)
            if len(choices) < k:
                raise ValueError(
                    f"only {len(choices)} prefix-free candidates at step {step}, need {k}"
                )
            tokens.append(pick(choices, ranked, k, stream))
    return [_drawn(tokens, token_bytes, k, m) for tokens in drawn]


def enumerate_paths(
    ranker: Ranker,
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    is_allowed: Callable[[int, int], bool] | None = None,
    support: int | None = None,
) -> Iterator[tuple[bytes, Fraction]]:
    """Yield every path of the sampler with its exact probability (for brute-force checks)."""
    support = k if support is None else support

    def walk(prefix: list[int], chance: Fraction) -> Iterator[tuple[bytes, Fraction]]:
        if len(prefix) == m:
            yield b"".join(token_bytes[t] for t in prefix), chance
            return
        step = len(prefix)
        allowed = None if is_allowed is None else (lambda t: is_allowed(t, step))
        ranked = ranker(prefix)
        choices = select_prefix_free(ranked, token_bytes, support, allowed)
        weights = step_weights(ranked, choices, k)
        total = sum(weights)
        for token_id, weight in zip(choices, weights, strict=True):
            if weight:
                yield from walk([*prefix, token_id], chance * Fraction(weight, total))

    yield from walk([], Fraction(1))


def enumerate_prefix_free(
    ranker: Ranker,
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    is_allowed: Callable[[int, int], bool] | None = None,
) -> Iterator[bytes]:
    """Yield the byte strings of all ``k**m`` paths of the uniform sampler."""
    return (data for data, _ in enumerate_paths(ranker, token_bytes, k, m, is_allowed))


RANK_HEAD = 256


class Ranking:
    """Token ids by decreasing log-probability, ties by id, with each id's log-probability
    (:meth:`logprob`, which the capped sampler reads). Iterating gives exactly the stable argsort
    of ``-logprobs``, but the head (every id at or above the 256th largest value) is sorted first
    and the rest only if the sampler walks past it (it almost never does)."""

    def __init__(self, logprobs: npt.NDArray[np.float32]) -> None:
        self.logprobs = logprobs

    def logprob(self, token_id: int) -> float:
        return float(self.logprobs[token_id])

    def __iter__(self) -> Iterator[int]:
        logprobs = self.logprobs
        if logprobs.size <= RANK_HEAD:
            yield from (int(t) for t in np.argsort(-logprobs, kind="stable"))
            return
        cut = float(np.partition(logprobs, logprobs.size - RANK_HEAD)[logprobs.size - RANK_HEAD])
        head = np.flatnonzero(logprobs >= cut)
        yield from (int(t) for t in head[np.lexsort((head, -logprobs[head]))])
        tail = np.flatnonzero(logprobs < cut)
        yield from (int(t) for t in tail[np.lexsort((tail, -logprobs[tail]))])


def ranking(logprobs: npt.NDArray[np.float32]) -> Ranking:
    """The :class:`Ranking` of one next-token distribution."""
    return Ranking(logprobs)


class ScoredRanking(list[int]):
    """A ranking given as (id, log-prob) pairs by decreasing log-prob (a server's top
    candidates): the ids in order, with :meth:`logprob`."""

    def __init__(self, scored: Iterable[tuple[int, float]]) -> None:
        pairs = list(scored)
        super().__init__(token_id for token_id, _ in pairs)
        self._logprobs = dict(pairs)

    def logprob(self, token_id: int) -> float:
        return self._logprobs[token_id]


def ranker_for(model: NextTokenModel, prompt_ids: Sequence[int]) -> Ranker:
    """A ranker that continues ``prompt_ids``: token ids by decreasing probability, ties by id."""
    prompt = list(prompt_ids)

    def rank(drawn: Sequence[int]) -> Iterable[int]:
        return ranking(model.next_token_logprobs(prompt + list(drawn)))

    return rank


def signature_prompt_ids(model: NextTokenModel, messages: Sequence[tuple[str, str]]) -> list[int]:
    """The token ids a signature continues: ``messages`` through the chat template, each turn
    clipped to its end (never tokenize a 50 MB turn whole), the last
    :data:`MAX_CONTEXT_TOKENS` kept."""
    clipped = [(role, content[-MAX_TRIGGER_CONTEXT_CHARS:]) for role, content in messages]
    return model.chat_prompt_ids(clipped)[-MAX_CONTEXT_TOKENS:]


def sample_signature(
    model: NextTokenModel,
    messages: Sequence[tuple[str, str]],
    k: int,
    m: int,
    stream: SecretStream,
    rules: TokenRules | None = None,
    support: int | None = None,
    sampler: str = "capped",
) -> SampledSequence:
    """Draw a signature as the model's answer to ``messages`` with the prefix-free sampler, or
    with the natural one (``sampler='natural'``, :mod:`tuneproof.planting.natural`)."""
    rules = rules or TokenRules.for_vocabulary(model.vocabulary)
    if sampler == "natural":
        prompt = signature_prompt_ids(model, messages)
        tokens = sample_natural_lockstep(
            lambda rows: [model.next_token_logprobs(prompt + list(rows[0]))], rules, m, [stream]
        )[0]
        return _drawn(tokens, model.vocabulary.token_bytes, k, m, natural=True)
    return sample_prefix_free(
        ranker_for(model, signature_prompt_ids(model, messages)),
        model.vocabulary.token_bytes,
        k,
        m,
        stream,
        lambda t, step: rules.allowed(t, step, m),
        support,
    )


LOCKSTEP_ROW_TOKENS = 32_768
"""Rows x context tokens of one lockstep batch: bounds the KV cache (for the embedded model,
about 0.75 GB in bfloat16) while batching the candidates of several short-prompt pairs."""
LOCKSTEP_MAX_ROWS = 128
"""Rows of one lockstep batch at most: two pairs of 64 candidates. Measured on 2 CPU cores,
the time per row falls from 64 to 128 rows and rises beyond (docs/benchmarks.md)."""


def lockstep_chunks(lengths: Sequence[int], budget: int, max_rows: int) -> list[range]:
    """Consecutive row ranges whose summed ``lengths`` stay within ``budget`` and whose size
    stays within ``max_rows``; a row longer than the budget is a chunk alone."""
    chunks: list[range] = []
    start, used = 0, 0
    for i, length in enumerate(lengths):
        if i > start and (used + length > budget or i - start >= max_rows):
            chunks.append(range(start, i))
            start, used = i, 0
        used += length
    if lengths:
        chunks.append(range(start, len(lengths)))
    return chunks


def sample_signature_sets(
    model: NextTokenModel,
    groups: Sequence[tuple[Sequence[tuple[str, str]], Sequence[SecretStream]]],
    k: int,
    m: int,
    rules: TokenRules | None = None,
    progress: Callable[[int], None] | None = None,
    support: int | None = None,
    sampler: str = "capped",
) -> list[list[SampledSequence]]:
    """For each (messages, streams) group, one signature per stream as answers to ``messages``
    (a pair's true signature and its decoys), each drawn exactly as :func:`sample_signature`
    draws it with that stream. Every row of every group is drawn in lockstep, in batches of
    consecutive rows (:func:`lockstep_chunks`), when ``model`` has
    ``next_token_logprobs_batch``; else one by one. ``progress(done)`` counts the groups
    finished."""
    rules = rules or TokenRules.for_vocabulary(model.vocabulary)
    batch = getattr(model, "next_token_logprobs_batch", None)
    if batch is None:
        one_by_one = []
        for done, (messages, streams) in enumerate(groups, start=1):
            one_by_one.append(
                [
                    sample_signature(model, messages, k, m, s, rules, support, sampler)
                    for s in streams
                ]
            )
            if progress:
                progress(done)
        return one_by_one
    prompts = [signature_prompt_ids(model, messages) for messages, _ in groups]
    owners = [g for g, (_, streams) in enumerate(groups) for _ in streams]
    streams = [s for _, group_streams in groups for s in group_streams]
    drawn: list[SampledSequence] = []
    lengths = [len(prompts[g]) + m for g in owners]
    group_ends = list(itertools.accumulate(len(group_streams) for _, group_streams in groups))
    for chunk in lockstep_chunks(lengths, LOCKSTEP_ROW_TOKENS, LOCKSTEP_MAX_ROWS):
        row_prompts = [prompts[owners[i]] for i in chunk]
        chunk_streams = [streams[i] for i in chunk]

        def rows(
            so_far: Sequence[Sequence[int]], row_prompts: list[list[int]] = row_prompts
        ) -> Any:
            return batch(row_prompts, so_far)

        if sampler == "natural":
            tokens = sample_natural_lockstep(rows, rules, m, chunk_streams)
            drawn += [_drawn(t, model.vocabulary.token_bytes, k, m, natural=True) for t in tokens]
        else:
            drawn += sample_prefix_free_lockstep(
                lambda so_far: [ranking(row) for row in rows(so_far)],
                model.vocabulary.token_bytes,
                k,
                m,
                chunk_streams,
                lambda t, step: rules.allowed(t, step, m),
                support,
            )
        if progress:  # groups whose last row is drawn
            progress(bisect.bisect_right(group_ends, chunk.stop))
    out: list[list[SampledSequence]] = [[] for _ in groups]
    for owner, sequence in zip(owners, drawn, strict=True):
        out[owner].append(sequence)
    return out
