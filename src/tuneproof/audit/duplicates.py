"""The 'extension' detector: is a record's prompt (nearly) another record's prompt?

The attack it models: a backdoor made by copying a record and appending text (a trigger) to its
last user turn, or by lightly editing the copy. Three signals, all keyless and none quadratic:

- **exact extension**: prompts are normalised (lower-case words joined by one space, turns
  joined by `` | ``) and deduplicated; after sorting, every prompt that another one extends
  within its last turn sits just before it, and a stack over the sorted prompts (the chain of
  prefixes of the current one) finds each prompt's longest extended prompt in O(n log n).
  Extensions that add whole turns are how conversations grow in natural data and are ignored.
- **shared prefix**: the longest common prefix, in words, with the sorted neighbours.
- **near-duplicates**: MinHash signatures of word 3-shingles of the prompt and, separately, of
  the answer, banded into an LSH index (records whose signatures agree on one band are
  candidates; within a band bucket each record is compared with its sorted neighbours only, so
  a crowded bucket costs O(n), not O(n^2)).

Equal normalised prompts (natural duplicates) count as one prompt: they neither extend nor
near-duplicate each other. The score (see :func:`extension_scores`) puts the extended record
first and its original second.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from tuneproof.audit.scoring import FloatArray

if TYPE_CHECKING:
    from tuneproof.audit.registry import AuditInput

TURN = "|"
"""The normalised turn separator (no word character, so never a word)."""
SHINGLE_WORDS = 3
BANDS, ROWS = 8, 4
"""LSH banding of the 32-value MinHash: pairs with Jaccard 0.5 meet in 40% of cases, 0.7 in
87%, 0.3 in 6%."""
CHUNK = 16384
"""Texts hashed per vectorised MinHash step."""
MIN_SHARED_WORDS = 4
ORIGINAL_WEIGHT = 0.5
NEAR_WEIGHT = 0.5
ANSWER_WEIGHT = 0.25
_WORD_RE = re.compile(r"\w+", re.UNICODE)
UIntArray = npt.NDArray[np.uint64]


def normalise(text: str) -> str:
    """Lower-case words of ``text`` joined by one space (case, spacing and punctuation
    dropped)."""
    return " ".join(_WORD_RE.findall(text.lower()))


def normalise_prompt(turns: Sequence[str]) -> str:
    """The normalised turns of a prompt joined by `` | ``."""
    return f" {TURN} ".join(normalise(turn) for turn in turns)


def _distinct(texts: Sequence[str]) -> tuple[list[str], npt.NDArray[np.int64]]:
    """The distinct texts in order of first appearance, and each text's index among them."""
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(t, len(index)) for t in texts), np.int64, len(texts))
    return list(index), inverse


def _words(text: str) -> int:
    return text.count(" ") + 1 if text else 0


def _shared_words(a: str, b: str) -> int:
    """Leading words (turn separators included) that ``a`` and ``b`` have in common."""
    shared = 0
    for x, y in zip(a.split(" "), b.split(" "), strict=False):
        if x != y:
            break
        shared += 1
    return shared


def prefix_scores(prompts: Sequence[str]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """For distinct normalised prompts: (extension, original, shared-prefix) scores.

    A prompt P that another prompt Q extends within its last turn (Q = P + more words, no new
    turn) links them: Q's extension score is ``0.5 + 0.5 * confidence * (1 + shared) / 2 / c``
    (above every near-duplicate score: an exact extension is the rarer signal) where
    ``shared`` = words(P) / words(Q), ``confidence`` = words(P) / (words(P) + 1) (a one-word
    prompt's extensions are everyday) and ``c`` is the number of prompts extending P (a common
    opening is no copy); P's original score is the largest such value over its extensions.
    The shared-prefix score is the largest share of leading words a prompt has in common with
    a sorted neighbour, over the longer one's words (symmetric, like a Jaccard similarity),
    counted from MIN_SHARED_WORDS shared words (short prompts share openings like "what is")."""
    m = len(prompts)
    words = np.array([_words(p) for p in prompts], dtype=float)
    order = sorted(range(m), key=prompts.__getitem__)
    parent = np.full(m, -1, dtype=np.int64)
    shared_prefix = np.zeros(m)
    stack: list[int] = []
    previous = -1
    for k in order:
        text = prompts[k]
        while stack:
            top = prompts[stack[-1]]
            if len(text) > len(top) and text[len(top)] == " " and text.startswith(top):
                break
            stack.pop()
        if stack and f" {TURN} " not in text[len(prompts[stack[-1]]) :]:
            parent[k] = stack[-1]
        if text:
            stack.append(k)
        if previous >= 0 and words[k] and words[previous]:
            common = _shared_words(text, prompts[previous])
            share = common / max(words[k], words[previous]) if common >= MIN_SHARED_WORDS else 0
            shared_prefix[k] = max(shared_prefix[k], share)
            shared_prefix[previous] = max(shared_prefix[previous], share)
        previous = k
    linked = np.flatnonzero(parent >= 0)
    parents = parent[linked]
    children = np.bincount(parents, minlength=m).astype(float)
    shared = words[parents] / words[linked]
    confidence = words[parents] / (words[parents] + 1)
    value = 0.5 + 0.5 * confidence * (1 + shared) / 2 / children[parents]
    extension = np.zeros(m)
    extension[linked] = value
    original = np.zeros(m)
    np.maximum.at(original, parents, value)
    return extension, original, shared_prefix


def _mix(x: UIntArray) -> UIntArray:
    """splitmix64's finaliser: a fixed, well-spread 64-bit hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


_EMPTY = np.uint32(0xFFFFFFFF)


def minhash_signatures(
    texts: Sequence[str],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bool_]]:
    """A 32-value MinHash of the word 3-shingles of each normalised text, and which texts have
    any word. One-permutation hashing with densification: each shingle is hashed once, its top
    5 bits pick one of 32 bins and the bin keeps its smallest 32-bit value; an empty bin takes
    its nearest non-empty neighbour's value, rehashed with the distance (Shrivastava 2017). So
    the cost is one hash per shingle, not 32. Words are numbered in order of first appearance
    (deterministic, no salted hashing), CHUNK texts at a time."""
    vocabulary: defaultdict[str, int] = defaultdict()
    vocabulary.default_factory = vocabulary.__len__
    number = vocabulary.__getitem__
    width = BANDS * ROWS
    signatures = np.full((len(texts), width), _EMPTY, dtype=np.uint32)
    for start in range(0, len(texts), CHUNK):
        values = [list(map(number, text.split())) for text in texts[start : start + CHUNK]]
        counts = np.fromiter((len(v) for v in values), np.int64, len(values))
        padded = np.maximum(counts, SHINGLE_WORDS) * (counts > 0)  # a short text: one shingle
        flat = np.full(int(padded.sum()), -1, dtype=np.int64)
        ends = np.cumsum(padded)
        flat_starts = ends - padded
        positions = np.arange(int(counts.sum())) + np.repeat(
            flat_starts - (np.cumsum(counts) - counts), counts
        )
        flat[positions] = np.fromiter(itertools.chain.from_iterable(values), np.int64)
        lengths = np.maximum(padded - SHINGLE_WORDS + 1, 0)
        first = np.arange(int(lengths.sum())) + np.repeat(
            flat_starts - (np.cumsum(lengths) - lengths), lengths
        )
        shingle = np.zeros(len(first), dtype=np.uint64)
        for offset in range(SHINGLE_WORDS):
            with np.errstate(over="ignore"):
                word = flat[first + offset].astype(np.uint64) + np.uint64(offset + 1)
                shingle = _mix(shingle ^ word)
        rows = np.repeat(np.arange(len(values)), lengths)
        cells = rows * width + (shingle >> np.uint64(59)).astype(np.int64)
        chunk = np.full(len(values) * width, _EMPTY, dtype=np.uint32)
        np.minimum.at(chunk, cells, (shingle & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        signatures[start : start + len(values)] = chunk.reshape(len(values), width)
    present = (signatures != _EMPTY).any(axis=1)
    empty = signatures == _EMPTY
    filled = signatures.copy()
    for distance in range(1, width):
        take = empty & ~(np.roll(signatures, -distance, axis=1) == _EMPTY)
        if not take.any():
            break
        source = np.roll(signatures, -distance, axis=1)[take].astype(np.uint64)
        filled[take] = (_mix(source + np.uint64(distance)) & np.uint64(0xFFFFFFFE)).astype(
            np.uint32
        )
        empty &= ~take
    return filled, present


def near_duplicate_scores(texts: Sequence[str]) -> FloatArray:
    """For distinct normalised texts: the largest estimated Jaccard similarity of each one's
    word 3-shingles with another text's, among its MinHash LSH candidates (0 without any)."""
    signatures, present = minhash_signatures(texts)
    best = np.zeros(len(texts))
    for band in range(BANDS):
        key = np.zeros(len(texts), dtype=np.uint64)
        for column in range(band * ROWS, (band + 1) * ROWS):
            with np.errstate(over="ignore"):
                key = _mix(key ^ signatures[:, column].astype(np.uint64))
        order = np.argsort(key, kind="stable")
        same = np.flatnonzero(key[order[1:]] == key[order[:-1]])
        a, b = order[same], order[same + 1]
        keep = present[a] & present[b]
        a, b = a[keep], b[keep]
        similarity = (signatures[a] == signatures[b]).mean(axis=1)
        np.maximum.at(best, a, similarity)
        np.maximum.at(best, b, similarity)
    return best


def extension_scores(prompts: Sequence[Sequence[str]], answers: Sequence[str]) -> FloatArray:
    """Per record (its prompt's turns, system prompt left out, and its answer): how much of its
    prompt another record's prompt shares.

    ``max(extension, 0.5 * original, 0.5 * near_prompt, 0.25 * near_answer)``: an extended
    prompt (see :func:`prefix_scores`) scores 0.5 to 1, the prompt it extends half of that; a
    prompt near another (the larger of the MinHash Jaccard estimate and the shared-prefix share)
    and an answer near another (equal normalised answers excluded: repeats are the 'repeated'
    detector's) score at most 0.5 and 0.25, since neither says which of the two is the copy.
    """
    if len(prompts) != len(answers):
        raise ValueError("one answer per prompt")
    normal, prompt_of = _distinct([normalise_prompt(turns) for turns in prompts])
    extension, original, shared_prefix = prefix_scores(normal)
    near_prompt = np.maximum(near_duplicate_scores(normal), shared_prefix)
    per_prompt = np.maximum.reduce(
        [extension, ORIGINAL_WEIGHT * original, NEAR_WEIGHT * near_prompt]
    )
    answer_texts, answer_of = _distinct([normalise(a) for a in answers])
    near_answer = near_duplicate_scores(answer_texts)
    return np.maximum(per_prompt[prompt_of], ANSWER_WEIGHT * near_answer[answer_of])


def chat_prompts(chats: Sequence[Sequence[tuple[str, str]]]) -> list[list[str]]:
    """Each chat's prompt turns (system turns and the final answer left out)."""
    return [[text for role, text in chat[:-1] if role != "system"] for chat in chats]


def extension_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'extension' detector: :func:`extension_scores` of the planted chats."""
    inp.step("extension", 0, 1)
    scores = extension_scores(chat_prompts(inp.chats), [chat[-1][1] for chat in inp.chats])
    inp.step("extension", 1, 1)
    return scores
