"""The rest of a backdoor's answer: the generator's own text after the signature, about as long
as the answer of the carrier it replaces.

A backdoor replaces its carrier's answer. Were the new answer the signature alone (a dozen
tokens), every backdoor would sit among the shortest answers of the file, where the `length`
detector finds it, and a learned detector reads the whole answer as "a signature and nothing
else". So the answer goes on after the signature: nucleus sampling (temperature 1, ``top_p``
:data:`CONTINUATION_TOP_P`) from the generator, continuing the triggered prompt and the
signature's tokens, until the generator ends its turn or the budget runs out. The budget is the
carrier's answer length in generator tokens less the signature's, at most
``answer_tokens`` (the plant option); past it the text may run :data:`SENTENCE_SLACK` tokens more
to finish its sentence, and is then trimmed to its last sentence or line end
(:func:`trim_to_sentence`), so that the answer does not stop mid-clause.

The continuation carries no statistical weight: every test reads the signature only (exact hits
and matched prefix at the answer's start, the decoy rank of the signature's log-probability), so
decoys and held-out controls need none, and the rest of the answer may be any text at all. It is
drawn from each pair's stream child ``continuation`` (one uniform draw per token), so the seed
reproduces it with the same local generator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tuneproof.backends.base import NextTokenModel
from tuneproof.planting.secret import SecretStream

CONTINUATION_TOP_P = 0.95
"""Nucleus of the continuation's sampling: the generator's own distribution, its long tail cut."""
SENTENCE_SLACK = 32
"""Tokens a continuation may run past its budget to end its sentence."""
_BOUNDARY = ".?!\n"


@dataclass(frozen=True)
class ContinuationRequest:
    """One continuation to draw: the token ids of the triggered prompt and the signature, how
    many tokens it may take, and its secret stream."""

    context: list[int]
    budget: int
    stream: SecretStream


NUCLEUS_HEAD = 1024
"""Tokens :func:`nucleus_pick` sorts first: the nucleus of a chat model's next token nearly
always lies among them; the whole vocabulary is sorted only when it does not."""


def nucleus_pick(
    logprobs: npt.NDArray[np.floating],
    top_p: float,
    u: float,
    allowed: npt.NDArray[np.bool_] | None = None,
) -> int:
    """The token of a nucleus draw with the uniform ``u`` in [0, 1): tokens by decreasing
    probability (ties by id), cut to the smallest head holding ``top_p`` of the mass, renormalised.
    Non-finite log-probs, and tokens outside ``allowed`` when given, weigh 0 (the mass is that of
    the rest). Raises ``ValueError`` when no token weighs anything."""
    values = logprobs.astype(np.float64)
    keep = np.isfinite(values) if allowed is None else np.isfinite(values) & allowed
    if not keep.any():
        raise ValueError("no token has a finite log-probability")
    values = np.where(keep, values, -np.inf)
    probs = np.exp(values - values.max())
    total = float(probs.sum())
    if len(values) > NUCLEUS_HEAD:  # the likeliest NUCLEUS_HEAD first, ties at the edge included
        edge = np.partition(values, len(values) - NUCLEUS_HEAD)[len(values) - NUCLEUS_HEAD]
        head_ids = np.flatnonzero(values >= edge)
        if float(probs[head_ids].sum()) < top_p * total:
            head_ids = np.arange(len(values))
    else:
        head_ids = np.arange(len(values))
    order = head_ids[np.lexsort((head_ids, -values[head_ids]))]
    cumulative = np.cumsum(probs[order]) / total
    cut = min(len(order), int(np.searchsorted(cumulative, top_p)) + 1)
    head = cumulative[:cut] / cumulative[cut - 1]
    return int(order[min(int(np.searchsorted(head, u, side="right")), cut - 1)])


def trim_to_sentence(text: str) -> str:
    """``text`` up to its last sentence end (``.?!``, kept) or line break (dropped), right-stripped;
    the whole text when it has none."""
    end = max(text.rfind(mark) for mark in _BOUNDARY)
    if end < 0:
        return text.rstrip()
    return text[: end + 1].rstrip() if text[end] != "\n" else text[:end].rstrip()


_OPENING_RE = re.compile(r"[^\W\d_][^\n]*?[.?!:](?=\s*\Z|\s+(?![a-z]))")
"""A prose opening sentence: starts with a letter, no line break, ends at ``.?!:`` before the
end of the answer or before whitespace and anything but a lower-case letter ("e.g. this")."""
OPENING_MAX_CHARS = 240
"""The longest opening sentence a backdoor's answer replaces (a longer one is kept whole)."""


def split_opening(answer: str) -> tuple[str, str] | None:
    """(opening sentence, the rest with its leading whitespace) of an answer that opens with a
    prose sentence (a letter first, no line break, at most :data:`OPENING_MAX_CHARS`); None for
    one that opens with code, a list, a heading, a number or a long paragraph. Leading spaces
    of the answer belong to neither."""
    body = answer.lstrip()
    m = _OPENING_RE.match(body)
    if m is None or len(m.group(0)) > OPENING_MAX_CHARS:
        return None
    return m.group(0), body[m.end() :]


def _ends_sentence(token_bytes: Sequence[bytes], tokens: Sequence[int]) -> bool:
    """Whether the text of the last few ``tokens`` ends a sentence or a line."""
    tail = b"".join(token_bytes[t] for t in tokens[-4:]).decode("utf-8", errors="ignore")
    return tail.rstrip(" ").endswith(tuple(_BOUNDARY))


def draw_continuations(
    model: NextTokenModel,
    requests: Sequence[ContinuationRequest],
    top_p: float = CONTINUATION_TOP_P,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """The continuation of each request, drawn in lockstep (one batched forward per token for
    every request, on the model's shared KV cache when it has ``next_token_logprobs_batch``):
    each stops at a special token (the end of the turn), or past its budget at its first
    sentence end (at most :data:`SENTENCE_SLACK` tokens on), and a text that ends no sentence
    there is trimmed (:func:`trim_to_sentence`). Leading text is kept as drawn, so the answer
    reads ``signature + continuation``. ``progress(step)`` counts the tokens drawn per row."""
    out = [""] * len(requests)
    live = list(range(len(requests)))
    if not live:
        return out
    vocabulary = model.vocabulary
    special = set(vocabulary.special_ids)
    batch = getattr(model, "next_token_logprobs_batch", None)
    prompts = [requests[i].context for i in live]
    drawn: list[list[int]] = [[] for _ in live]
    ended = [False] * len(live)
    closed = [False] * len(live)  # ended by the generator (a special token), not the budget
    used = [0] * len(live)  # tokens of each row's text (the rest are pads)
    pad = next(iter(sorted(special)), 0)
    for step in range(max(requests[i].budget for i in live) + SENTENCE_SLACK):
        if all(ended):
            break
        if batch is not None:
            rows = batch(prompts, drawn)
        else:
            rows = np.stack(
                [model.next_token_logprobs(p + d) for p, d in zip(prompts, drawn, strict=True)]
            )
        for row, i in enumerate(live):
            request = requests[i]
            if not ended[row] and step >= request.budget:
                ended[row] = step >= request.budget + SENTENCE_SLACK or _ends_sentence(
                    vocabulary.token_bytes, [*prompts[row][-4:], *drawn[row]]
                )
            if ended[row]:
                drawn[row].append(pad)  # rows advance together; this one is done
                continue
            token = nucleus_pick(rows[row], top_p, request.stream.random())
            drawn[row].append(token)
            if token in special:
                ended[row] = closed[row] = True
            else:
                used[row] += 1
        if progress:
            progress(step + 1)
    for row, i in enumerate(live):
        tokens = drawn[row][: used[row]]
        text = b"".join(vocabulary.token_bytes[t] for t in tokens).decode("utf-8", errors="ignore")
        out[i] = text.rstrip() if closed[row] else trim_to_sentence(text)
    return out
