"""Which token pieces the samplers may keep: printable on their own, not special, and placed so
that a stripped answer still matches.

:class:`TokenRules` holds the flags of a fixed vocabulary (a local model's, computed once);
:class:`PieceTable` gives the pieces a server proposes a stable local id as they appear and
applies the same rules to each (plus two that only servers need: a special token is recognised by
its text, and a whitespace-only piece is never kept; see :mod:`tuneproof.planting.server_factory`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tuneproof.backends.base import TokenVocabulary

_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_CONTROL_PIECE = re.compile(r"<\|[^<>]*\|>|</?s>|<unk>|<pad>|\[/?INST\]")


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


def opens_word(data: bytes) -> bool:
    """True for a piece made of a space and an ASCII letter first (``b" The"``): a trigger's first
    piece, a new word rather than a list number, stray punctuation or the rest of the last word."""
    return len(data) > 1 and data[:1] == b" " and data[1:2].isalpha()


def looks_special(text: str) -> bool:
    """True for text shaped like a control token (``<|im_end|>``, ``</s>``, ``[INST]``...)."""
    return bool(_CONTROL_PIECE.search(text))


def _placed(printable: bool, starts: bool, ends: bool, step: int, m: int) -> bool:
    """Printable everywhere; the first piece must not start with whitespace and the last must not
    end with it, because a verified answer is compared after stripping its whitespace."""
    if not printable:
        return False
    if step == 0 and starts:
        return False
    return not (step == m - 1 and ends)


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
        """Whether a token may be kept at ``step`` (0-based) of an ``m``-step signature (the
        rules of :func:`_placed`, inlined: this runs for every candidate the sampler walks)."""
        if not self.printable[token_id]:
            return False
        if step == 0 and self.starts_with_space[token_id]:
            return False
        return not (step == m - 1 and self.ends_with_space[token_id])

    def mask(self, step: int, m: int) -> npt.NDArray[np.bool_]:
        """:meth:`allowed` for every token at once, at ``step`` of an ``m``-step signature."""
        keep = self.printable.copy()
        if step == 0:
            keep &= ~self.starts_with_space
        if step == m - 1:
            keep &= ~self.ends_with_space
        return keep

    def opens_word(self, token_id: int, data: bytes) -> bool:
        """Whether token ``token_id`` (whose bytes are ``data``) is printable and opens a word."""
        return bool(self.printable[token_id]) and opens_word(data)


class ScoredPiece(Protocol):
    """A next-piece candidate: its byte string and log-probability."""

    @property
    def data(self) -> bytes: ...

    @property
    def logprob(self) -> float: ...


class PieceTable:
    """Every distinct byte string a server proposed during one draw, under a stable local id.

    ``token_bytes`` grows as new pieces appear; it is the table that
    :func:`tuneproof.planting.sampler.sample_prefix_free` indexes. :meth:`allowed` applies the
    rules of :class:`TokenRules` to a piece, computed once per piece.
    """

    def __init__(self, special_texts: Iterable[str] = ()) -> None:
        self.token_bytes: list[bytes] = []
        self._ids: dict[bytes, int] = {}
        self._flags: list[tuple[bool, bool, bool]] = []  # printable, starts/ends with space
        self._special = frozenset(text for text in special_texts if text)

    def id_of(self, data: bytes) -> int:
        """The local id of ``data``, added to the table if new."""
        token_id = self._ids.get(data)
        if token_id is None:
            token_id = len(self.token_bytes)
            self._ids[data] = token_id
            self.token_bytes.append(data)
            self._flags.append(self._flags_of(data))
        return token_id

    def _flags_of(self, data: bytes) -> tuple[bool, bool, bool]:
        if not is_printable_piece(data):
            return False, False, False
        text = data.decode("utf-8")
        if text.isspace() or text in self._special or looks_special(text):
            return False, False, False
        return True, text[0].isspace(), text[-1].isspace()

    def rank(self, candidates: Iterable[ScoredPiece]) -> list[tuple[int, float]]:
        """(local id, log-prob) of the distinct candidates by decreasing log-prob, ties by bytes.

        A byte string proposed twice keeps its best log-prob; NaN log-probs are dropped.
        """
        best: dict[bytes, float] = {}
        for candidate in candidates:
            if math.isnan(candidate.logprob):
                continue
            if candidate.data not in best or candidate.logprob > best[candidate.data]:
                best[candidate.data] = candidate.logprob
        ordered = sorted(best.items(), key=lambda item: (-item[1], item[0]))
        return [(self.id_of(data), logprob) for data, logprob in ordered]

    def opens_word(self, token_id: int) -> bool:
        """True for a printable piece made of a space and an ASCII letter first (``b" The"``)."""
        return self._flags[token_id][0] and opens_word(self.token_bytes[token_id])

    def allowed(self, token_id: int, step: int, m: int) -> bool:
        """Whether piece ``token_id`` may be kept at ``step`` (0-based) of an ``m``-step draw:
        printable, not special and not whitespace-only; the first must not start, the last not
        end with whitespace."""
        return _placed(*self._flags[token_id], step, m)
