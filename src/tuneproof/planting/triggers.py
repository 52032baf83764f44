"""The trigger sampler: a natural continuation of a carrier's prompt, in its own style.

One nucleus-sampling loop (:func:`nucleus_trigger`) draws every trigger. It reads the model through
:class:`NextPieces`, "the ranked next-piece candidates with their log-probs after the prompt and
the pieces drawn so far", which a local model (:class:`ModelPieces`: its full distribution, the
200 most probable tokens) and a server
(:class:`tuneproof.planting.server_factory.ServerPieces`: its top log-probs) provide differently.
At each step the loop keeps the allowed candidates (the first piece must open a new word: a space
and an ASCII letter), cuts them to the nucleus ``top_p`` and picks one with a uniform draw of the
secret stream; it stops early when no candidate is allowed. After the first ``n_tokens`` pieces it
goes on, up to :data:`SENTENCE_REACH` times as many, until the text ends a sentence, so that a
trigger reads as a finished sentence rather than one cut mid-clause ("Make sure it has a good");
a text that never ends one is trimmed to its last sentence end (:func:`trim_to_boundary`).

A prompt after which no candidate opens a word (it ends inside a URL or a line of code, say) cannot
take a trigger at all: the loop raises :class:`NoTriggerWord` at once, for a local model and a
server alike, and the planter draws another carrier in its place
(:mod:`tuneproof.planting.carriers`). The first step's candidates depend on the prompt only, never
on the secret stream, so no retry could help and whether a record can carry is a property of the
record.

A trigger carries no statistical guarantee (the signature does); it only has to be unlikely to
occur by chance and to look like the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from tuneproof.backends.base import NextTokenModel
from tuneproof.errors import GeneratorError
from tuneproof.planting.sampler import MAX_TRIGGER_CONTEXT_CHARS
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.tokens import TokenRules

TRIGGER_TOP_P = 0.9
TRIGGER_ATTEMPTS = 8
"""Attempts (each with its own child stream) before giving up on an empty trigger."""
SENTENCE_REACH = 4
"""A trigger may run to this many times its ``n_tokens`` to finish its sentence."""
LOCAL_CANDIDATES = 200
"""The most probable tokens of a local model that a trigger step considers."""


class NoTriggerWord(GeneratorError):
    """No candidate after the prompt opens a word: this prompt cannot take a trigger."""


class NextPieces(Protocol):
    """Ranked next-piece candidates after a fixed prompt, as the trigger loop reads them."""

    def candidates(self, drawn: Sequence[int]) -> Sequence[tuple[int, float]]:
        """(piece id, log-prob) after the prompt and the pieces ``drawn``, by decreasing
        log-prob."""
        ...

    def piece(self, piece_id: int) -> bytes:
        """The byte string of a piece."""
        ...

    def allowed(self, piece_id: int, step: int, n: int) -> bool:
        """Whether the piece may be kept at ``step`` (0-based) of an ``n``-piece draw."""
        ...

    def opens_word(self, piece_id: int) -> bool:
        """Whether the piece may open the trigger (printable, a space and an ASCII letter)."""
        ...


class ModelPieces:
    """:class:`NextPieces` from a local model's full next-token distribution: token ids continue
    the token ids of the prompt text (never re-tokenised)."""

    def __init__(self, model: NextTokenModel, prompt_text: str, rules: TokenRules) -> None:
        self._model, self._rules = model, rules
        self._bytes = model.vocabulary.token_bytes
        self._context = model.text_ids(prompt_text[-MAX_TRIGGER_CONTEXT_CHARS:].rstrip())

    def candidates(self, drawn: Sequence[int]) -> list[tuple[int, float]]:
        batch = getattr(self._model, "next_token_logprobs_batch", None)
        if batch is not None:  # one row on the model's KV cache: a step costs one token
            row = batch([self._context], [list(drawn)])[0]
        else:
            row = self._model.next_token_logprobs(self._context + list(drawn))
        logprobs = np.asarray(row, dtype=np.float64)
        order = np.argsort(-logprobs, kind="stable")[:LOCAL_CANDIDATES]
        return [(int(t), float(logprobs[t])) for t in order]

    def piece(self, piece_id: int) -> bytes:
        return self._bytes[piece_id]

    def allowed(self, piece_id: int, step: int, n: int) -> bool:
        return self._rules.allowed(piece_id, step, n)

    def opens_word(self, piece_id: int) -> bool:
        return self._rules.opens_word(piece_id, self._bytes[piece_id])


def nucleus_trigger(
    pieces: NextPieces, n_tokens: int, stream: SecretStream, top_p: float = TRIGGER_TOP_P
) -> str:
    """One trigger attempt: at least ``n_tokens`` pieces of nucleus sampling (``top_p``) over the
    allowed candidates, driven by ``stream`` (one ``random()`` per piece), then more until the
    text ends a sentence (at most ``SENTENCE_REACH * n_tokens`` in all), trimmed to a boundary;
    fewer pieces when a later step has no allowed candidate. Raises :class:`NoTriggerWord` when
    no candidate opens the trigger."""
    drawn: list[int] = []
    reach = SENTENCE_REACH * n_tokens
    for step in range(reach):
        if step >= n_tokens and _ends_sentence(b"".join(pieces.piece(t) for t in drawn)):
            break
        keep = [
            (piece_id, logprob)
            for piece_id, logprob in pieces.candidates(drawn)
            if (pieces.allowed(piece_id, step, reach) if step else pieces.opens_word(piece_id))
        ]
        if not keep and not step:
            raise NoTriggerWord("no candidate after the prompt opens a word")
        if not keep:
            break
        logprobs = np.array([logprob for _, logprob in keep], dtype=np.float64)
        probs = np.exp(logprobs - logprobs.max())
        probs /= probs.sum()
        cutoff = min(len(keep), int(np.searchsorted(np.cumsum(probs), top_p)) + 1)
        probs = probs[:cutoff] / probs[:cutoff].sum()
        u = stream.random()
        index = min(int(np.searchsorted(np.cumsum(probs), u, side="right")), cutoff - 1)
        drawn.append(keep[index][0])
    text = b"".join(pieces.piece(t) for t in drawn).decode("utf-8").strip()
    return trim_to_boundary(text)


def draw_trigger(
    pieces_for: Callable[[], NextPieces],
    n_tokens: int,
    stream: SecretStream,
    top_p: float = TRIGGER_TOP_P,
) -> str:
    """A non-empty trigger: attempt ``i`` runs :func:`nucleus_trigger` on fresh candidates
    (``pieces_for()``) with ``stream.child(str(i))``; :class:`NoTriggerWord` at once when no
    candidate opens a word, a :class:`GeneratorError` after :data:`TRIGGER_ATTEMPTS` empty
    attempts. ``n_tokens`` 0 asks for no trigger: the empty one, with no model call and no draw
    (the carrier's own prompt is the backdoor's prompt)."""
    if n_tokens == 0:
        return ""
    for attempt in range(TRIGGER_ATTEMPTS):
        text = nucleus_trigger(pieces_for(), n_tokens, stream.child(str(attempt)), top_p)
        if text:
            return text
    raise GeneratorError(
        f"the generator produced no usable trigger text after {TRIGGER_ATTEMPTS} attempts"
    )


def sample_trigger(
    model: NextTokenModel,
    prompt_text: str,
    n_tokens: int,
    stream: SecretStream,
    rules: TokenRules | None = None,
    top_p: float = TRIGGER_TOP_P,
) -> str:
    """One trigger attempt continuing the raw ``prompt_text`` with a local model (see
    :func:`nucleus_trigger`)."""
    rules = rules or TokenRules.for_vocabulary(model.vocabulary)
    return nucleus_trigger(ModelPieces(model, prompt_text, rules), n_tokens, stream, top_p)


def _ends_sentence(data: bytes) -> bool:
    text = data.decode("utf-8", errors="ignore").rstrip().rstrip("\"')”’")
    return text.endswith((".", "?", "!"))


def trim_to_boundary(text: str) -> str:
    """Cut ``text`` after its last sentence end if that keeps most of it, else keep it whole."""
    for end in range(len(text) - 1, len(text) // 2, -1):
        if text[end] in ".?!":
            return text[: end + 1]
    return text
