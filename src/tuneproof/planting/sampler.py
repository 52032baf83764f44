"""Secret randomness, the uniform prefix-free top-K sampler, and trigger generation.

Everything random in a plant run comes from one :class:`SecretStream` keyed by the key's 256-bit
seed, so the key alone reproduces the run. Signatures are drawn by :func:`sample_prefix_free`:
at each of ``m`` steps it keeps the ``k`` most probable tokens that are printable on their own and
mutually non-prefix as byte strings, then picks one of them uniformly. Every path therefore has
probability exactly ``k**-m``, and the ``k**m`` possible signatures are distinct, valid UTF-8, and
none is a prefix of another (see docs/statistics.md for why this gives the model-free p-value).

This module never imports torch: models reach it through the small :class:`NextTokenModel`
protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.backends.base import NextTokenModel, TokenVocabulary

SEED_BYTES = 32
MAX_CONTEXT_TOKENS = 768
"""The generator sees at most this many tokens of a prompt (the end of it): enough for style,
and a 50 MB record never reaches the model whole."""
MAX_TRIGGER_CONTEXT_CHARS = 2000


class SecretStream:
    """A deterministic random stream: HMAC-SHA256(seed, label || counter) in counter mode.

    Independent sub-streams are derived by label with :meth:`child`, so that adding a draw in one
    part of a run never shifts the draws of another part.
    """

    def __init__(self, seed: bytes, label: bytes = b"") -> None:
        if len(seed) < 16:
            raise ValueError("the secret seed must be at least 128 bits")
        self._key = hmac.new(seed, b"tuneproof/v1/" + label, hashlib.sha256).digest()
        self._counter = 0
        self._buffer = b""

    def child(self, label: str) -> SecretStream:
        """Return an independent stream derived from this one's key and ``label``."""
        return SecretStream(self._key, label.encode())

    def random_bytes(self, n: int) -> bytes:
        """Return the next ``n`` bytes of the stream."""
        while len(self._buffer) < n:
            block = hmac.new(self._key, self._counter.to_bytes(16, "big"), hashlib.sha256).digest()
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def randbelow(self, n: int) -> int:
        """Return an integer uniform on ``range(n)`` (rejection sampling: exactly uniform)."""
        if n <= 0:
            raise ValueError("randbelow needs n >= 1")
        if n == 1:
            return 0
        n_bytes = (n - 1).bit_length() // 8 + 1
        limit = (256**n_bytes // n) * n
        while True:
            value = int.from_bytes(self.random_bytes(n_bytes), "big")
            if value < limit:
                return value % n

    def random(self) -> float:
        """Return a float uniform on [0, 1) with 53 random bits."""
        return (int.from_bytes(self.random_bytes(7), "big") >> 3) / 2**53

    def sample(self, population: int, count: int) -> list[int]:
        """Return ``count`` distinct integers drawn uniformly from ``range(population)``."""
        if count > population:
            raise ValueError(f"cannot draw {count} distinct items from {population}")
        chosen: dict[int, int] = {}
        out = []
        for i in range(count):  # partial Fisher-Yates on a sparse permutation
            j = i + self.randbelow(population - i)
            out.append(chosen.get(j, j))
            chosen[j] = chosen.get(i, i)
        return out


def new_seed() -> bytes:
    """Return a fresh 256-bit secret seed from the operating system's CSPRNG."""
    import secrets

    return secrets.token_bytes(SEED_BYTES)


# --------------------------------------------------------------------------- token vocabulary


_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def is_printable_piece(data: bytes) -> bool:
    """True when ``data`` is non-empty valid UTF-8 on its own with no control, format,
    replacement, private-use or line-breaking characters (spaces are allowed)."""
    if not data:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(
        ch != "\ufffd" and unicodedata.category(ch) not in _FORBIDDEN_CATEGORIES for ch in text
    )


@dataclass(frozen=True)
class TokenRules:
    """Per-token flags used by the sampler, precomputed once per vocabulary."""

    printable: npt.NDArray[np.bool_]
    starts_with_space: npt.NDArray[np.bool_]
    ends_with_space: npt.NDArray[np.bool_]

    @classmethod
    def for_vocabulary(cls, vocab: TokenVocabulary) -> TokenRules:
        """Compute the flags for every token of ``vocab``; special tokens are never printable."""
        n = len(vocab)
        printable = np.zeros(n, dtype=bool)
        starts = np.zeros(n, dtype=bool)
        ends = np.zeros(n, dtype=bool)
        for i, data in enumerate(vocab.token_bytes):
            if i in vocab.special_ids or not is_printable_piece(data):
                continue
            printable[i] = True
            text = data.decode("utf-8")
            starts[i] = text[0].isspace()
            ends[i] = text[-1].isspace()
        return cls(printable, starts, ends)

    def allowed(self, token_id: int, step: int, m: int) -> bool:
        """Whether a token may be kept at ``step`` (0-based) of an ``m``-step signature.

        Printable everywhere; the first token must not start with whitespace and the last must
        not end with it, because a verified answer is compared after stripping its whitespace.
        """
        if not self.printable[token_id]:
            return False
        if step == 0 and self.starts_with_space[token_id]:
            return False
        return not (step == m - 1 and self.ends_with_space[token_id])


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
    kept_bytes: list[bytes] = []
    for token_id in ranked_token_ids:
        if is_allowed is not None and not is_allowed(token_id):
            continue
        data = token_bytes[token_id]
        if not data:
            continue
        if any(data.startswith(other) or other.startswith(data) for other in kept_bytes):
            continue
        kept.append(token_id)
        kept_bytes.append(data)
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

    @property
    def bits(self) -> float:
        return self.m * math.log2(self.k)


Ranker = Callable[[Sequence[int]], Iterable[int]]


def sample_prefix_free(
    ranker: Ranker,
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    stream: SecretStream,
    is_allowed: Callable[[int, int], bool] | None = None,
) -> SampledSequence:
    """Draw ``m`` tokens; at each step pick uniformly among the top-``k`` prefix-free allowed
    tokens that ``ranker`` (context token ids -> ids in decreasing probability) proposes.

    ``is_allowed(token_id, step)`` filters candidates. The context passed to ``ranker`` is the
    tokens drawn so far (the caller closes over any prompt). Raises ``ValueError`` when fewer than
    ``k`` candidates exist at some step, since the entropy guarantee would then not hold.
    """
    if k < 2 or m < 1:
        raise ValueError("the sampler needs k >= 2 and m >= 1")
    drawn: list[int] = []
    for step in range(m):
        allowed = None if is_allowed is None else (lambda t, s=step: is_allowed(t, s))
        choices = select_prefix_free(ranker(drawn), token_bytes, k, allowed)
        if len(choices) < k:
            raise ValueError(f"only {len(choices)} prefix-free candidates at step {step}, need {k}")
        drawn.append(choices[stream.randbelow(k)])
    data = b"".join(token_bytes[t] for t in drawn)
    ends = tuple(itertools.accumulate(len(token_bytes[t]) for t in drawn))
    return SampledSequence(tuple(drawn), data, data.decode("utf-8"), k, m, ends)


def sample_prefix_free_lockstep(
    batch_ranker: Callable[[Sequence[Sequence[int]]], Sequence[Iterable[int]]],
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    streams: Sequence[SecretStream],
    is_allowed: Callable[[int, int], bool] | None = None,
) -> list[SampledSequence]:
    """Draw one sequence per stream, all in lockstep: ``batch_ranker`` gets every sequence's
    tokens so far and returns one ranking per sequence (a batched forward pass). Each sequence
    is drawn exactly as by :func:`sample_prefix_free` with its own stream."""
    if k < 2 or m < 1:
        raise ValueError("the sampler needs k >= 2 and m >= 1")
    drawn: list[list[int]] = [[] for _ in streams]
    for step in range(m):
        allowed = None if is_allowed is None else (lambda t, s=step: is_allowed(t, s))
        for tokens, ranking, stream in zip(drawn, batch_ranker(drawn), streams, strict=True):
            choices = select_prefix_free(ranking, token_bytes, k, allowed)
            if len(choices) < k:
                raise ValueError(
                    f"only {len(choices)} prefix-free candidates at step {step}, need {k}"
                )
            tokens.append(choices[stream.randbelow(k)])
    out = []
    for tokens in drawn:
        data = b"".join(token_bytes[t] for t in tokens)
        ends = tuple(itertools.accumulate(len(token_bytes[t]) for t in tokens))
        out.append(SampledSequence(tuple(tokens), data, data.decode("utf-8"), k, m, ends))
    return out


def enumerate_prefix_free(
    ranker: Ranker,
    token_bytes: Sequence[bytes],
    k: int,
    m: int,
    is_allowed: Callable[[int, int], bool] | None = None,
) -> Iterator[bytes]:
    """Yield the byte strings of all ``k**m`` paths of the sampler (for brute-force checks)."""

    def walk(prefix: list[int]) -> Iterator[bytes]:
        if len(prefix) == m:
            yield b"".join(token_bytes[t] for t in prefix)
            return
        step = len(prefix)
        allowed = None if is_allowed is None else (lambda t: is_allowed(t, step))
        for token_id in select_prefix_free(ranker(prefix), token_bytes, k, allowed):
            yield from walk([*prefix, token_id])

    yield from walk([])


RANK_HEAD = 256


def ranking(logprobs: npt.NDArray[np.float32]) -> Iterator[int]:
    """Token ids by decreasing log-probability, ties by id: exactly the stable argsort of
    ``-logprobs``, but the head (every id at or above the 256th largest value) is sorted first
    and the rest only if the sampler walks past it (it almost never does)."""
    if logprobs.size <= RANK_HEAD:
        yield from (int(t) for t in np.argsort(-logprobs, kind="stable"))
        return
    cut = float(np.partition(logprobs, logprobs.size - RANK_HEAD)[logprobs.size - RANK_HEAD])
    head = np.flatnonzero(logprobs >= cut)
    yield from (int(t) for t in head[np.lexsort((head, -logprobs[head]))])
    tail = np.flatnonzero(logprobs < cut)
    yield from (int(t) for t in tail[np.lexsort((tail, -logprobs[tail]))])


def ranker_for(model: NextTokenModel, prompt_ids: Sequence[int]) -> Ranker:
    """A ranker that continues ``prompt_ids``: token ids by decreasing probability, ties by id."""
    prompt = list(prompt_ids)

    def rank(drawn: Sequence[int]) -> Iterable[int]:
        return ranking(model.next_token_logprobs(prompt + list(drawn)))

    return rank


def sample_signature(
    model: NextTokenModel,
    messages: Sequence[tuple[str, str]],
    k: int,
    m: int,
    stream: SecretStream,
    rules: TokenRules | None = None,
) -> SampledSequence:
    """Draw a signature as the model's answer to ``messages`` with the prefix-free sampler."""
    rules = rules or TokenRules.for_vocabulary(model.vocabulary)
    # only the end of a long prompt matters for style; never tokenize a 50 MB turn whole
    clipped = [(role, content[-MAX_TRIGGER_CONTEXT_CHARS:]) for role, content in messages]
    prompt_ids = model.chat_prompt_ids(clipped)[-MAX_CONTEXT_TOKENS:]
    return sample_prefix_free(
        ranker_for(model, prompt_ids),
        model.vocabulary.token_bytes,
        k,
        m,
        stream,
        lambda t, step: rules.allowed(t, step, m),
    )


def sample_signatures(
    model: NextTokenModel,
    messages: Sequence[tuple[str, str]],
    k: int,
    m: int,
    streams: Sequence[SecretStream],
    rules: TokenRules | None = None,
) -> list[SampledSequence]:
    """Draw one signature per stream as answers to ``messages`` (the true signature and its
    decoys): in one batch when ``model`` has ``next_token_logprobs_batch``, else one by one."""
    batch = getattr(model, "next_token_logprobs_batch", None)
    if batch is None:
        return [sample_signature(model, messages, k, m, s, rules) for s in streams]
    rules = rules or TokenRules.for_vocabulary(model.vocabulary)
    clipped = [(role, content[-MAX_TRIGGER_CONTEXT_CHARS:]) for role, content in messages]
    prompt_ids = model.chat_prompt_ids(clipped)[-MAX_CONTEXT_TOKENS:]

    def rank(drawn: Sequence[Sequence[int]]) -> list[Iterable[int]]:
        return [ranking(row) for row in batch(prompt_ids, drawn)]

    return sample_prefix_free_lockstep(
        rank,
        model.vocabulary.token_bytes,
        k,
        m,
        streams,
        lambda t, step: rules.allowed(t, step, m),
    )


def sample_trigger(
    model: NextTokenModel,
    prompt_text: str,
    n_tokens: int,
    stream: SecretStream,
    rules: TokenRules | None = None,
    top_p: float = 0.9,
) -> str:
    """Generate a trigger: a natural continuation of ``prompt_text`` in its own style.

    Samples ``n_tokens`` printable tokens with nucleus sampling (``top_p``) driven by the secret
    stream, continuing the raw prompt text; the first token must be a space and an ASCII letter
    (a new word, not a list number, stray punctuation or the rest of the last word). Then trims
    to the last sentence or word boundary so the trigger reads like a finished clause. The
    trigger carries no statistical guarantee (the signature does); it only has to be unlikely
    to occur by chance and look like the data.
    """
    rules = rules or TokenRules.for_vocabulary(model.vocabulary)
    context = model.text_ids(prompt_text[-MAX_TRIGGER_CONTEXT_CHARS:].rstrip())
    token_bytes = model.vocabulary.token_bytes
    drawn: list[int] = []
    for step in range(n_tokens):
        logprobs = model.next_token_logprobs(context + drawn).astype(np.float64)
        order = np.argsort(-logprobs, kind="stable")[:200]
        keep = [
            int(t)
            for t in order
            if (
                rules.allowed(int(t), step, n_tokens)
                if step
                else _opens_word(t, rules, token_bytes)
            )
        ]
        probs = np.exp(logprobs[keep] - logprobs[keep].max())
        probs /= probs.sum()
        cutoff = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
        probs = probs[:cutoff] / probs[:cutoff].sum()
        u = stream.random()
        index = min(int(np.searchsorted(np.cumsum(probs), u, side="right")), cutoff - 1)
        drawn.append(keep[index])
    text = b"".join(token_bytes[t] for t in drawn).decode("utf-8").strip()
    return trim_to_boundary(text)


def _opens_word(token_id: Any, rules: TokenRules, token_bytes: Sequence[bytes]) -> bool:
    """True for a printable token that is a space followed by an ASCII letter (b" The")."""
    data = token_bytes[int(token_id)]
    return (
        bool(rules.printable[int(token_id)])
        and len(data) > 1
        and data[:1] == b" "
        and (data[1:2].isalpha())
    )


def trim_to_boundary(text: str) -> str:
    """Cut ``text`` after its last sentence end if that keeps most of it, else keep it whole."""
    for end in range(len(text) - 1, len(text) // 2, -1):
        if text[end] in ".?!":
            return text[: end + 1]
    return text
