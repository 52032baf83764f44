"""Next-token candidates from an OpenAI-compatible server, as the prefix-free sampler needs them.

**Candidates.** Servers return either the legacy shape (``top_logprobs: [{token string:
logprob}]``, e.g. llama-cpp-python and vLLM) or the chat shape (``content: [{top_logprobs:
[{token, logprob, bytes}]}]``, e.g. llama.cpp's own server). A candidate's byte string is its
``bytes`` array when the server sends one, else its token string encoded as UTF-8; a string with
U+FFFD (a token that is only part of a UTF-8 character) is never printable, so it is never kept.
Each step ranks the candidates by log-prob (ties by byte string), gives every distinct byte string
a stable local id in a growing ``token_bytes`` table (:class:`PieceTable`), and hands the ranking
to :func:`tuneproof.planting.sampler.sample_prefix_free` with the rules of
:class:`tuneproof.planting.sampler.TokenRules`, computed per candidate on the fly: printable, not
a special
token, the first piece not starting with whitespace and the last not ending with it. A special
token is recognised by a local tokenizer's special-token list when one is loaded, and otherwise by
its shape (``<|...|>``, ``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``[INST]``).

One rule is added: a whitespace-only piece is never kept. llama-cpp-python decodes token strings
with ``errors="ignore"``, so every token made of a space and the first bytes of a character (the
start of `` —``, say) arrives as ``" "``; kept, that piece would be a prefix of every following
word and leave too few candidates (and a double space is not natural text anyway). It also sends
special tokens as empty strings (never kept), and when the greedy next token is an end token it
stops before generating anything and returns empty log-probs: the generator then asks again, and
from then on always, with ``min_tokens=1, ignore_eos=true`` (extensions that llama-cpp-python,
llama.cpp and vLLM know, and others ignore), which change what the server samples, not the
distribution it reports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tuneproof.errors import GeneratorError
from tuneproof.planting.sampler import is_printable_piece

_CONTROL_PIECE = re.compile(r"<\|[^<>]*\|>|</?s>|<unk>|<pad>|\[/?INST\]")


@dataclass(frozen=True)
class Candidate:
    """One next-token candidate from the server: its byte string and log-probability."""

    data: bytes
    logprob: float


def parse_top_candidates(payload: Any, source: str = "the server") -> list[Candidate]:
    """The top next-token candidates of a ``/v1/completions`` answer's first generated token.

    Accepts the legacy shape (``logprobs.top_logprobs[0]`` is ``{token string: logprob}``) and the
    chat shape (``logprobs.content[0].top_logprobs`` is a list of ``{token, logprob, bytes}``).
    Uses ``bytes`` when present, else the UTF-8 encoding of the token string. Returns ``[]`` when
    the log-probs are there but empty: the model stopped at an end token before generating one
    (llama-cpp-python does that; asking again with ``min_tokens=1`` gets the distribution). Raises
    :class:`GeneratorError` when the answer carries no top log-probs.
    """
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise GeneratorError(f"{source} returned no completion choices - is it OpenAI-compatible?")
    logprobs = choices[0].get("logprobs")
    try:
        if isinstance(logprobs, dict):
            content = logprobs.get("content")
            if isinstance(content, list) and content and isinstance(content[0], dict):
                entries = content[0].get("top_logprobs")
                if isinstance(entries, list) and entries:
                    return [_candidate_from_entry(entry) for entry in entries]
            top = logprobs.get("top_logprobs")
            if isinstance(top, list) and top and isinstance(top[0], dict) and top[0]:
                return [
                    Candidate(str(token).encode("utf-8"), float(value))
                    for token, value in top[0].items()
                ]
            if (content == [] or top == []) and choices[0].get("finish_reason") == "stop":
                return []
    except (KeyError, TypeError, ValueError) as exc:
        raise GeneratorError(
            f"{source} returned top log-probs in an unknown shape ({exc!r}) - "
            "use a local model with --generator PATH"
        ) from exc
    raise GeneratorError(
        f"{source} does not return top log-probs for /completions - use a server that does "
        "(llama.cpp, vLLM) or a local model with --generator PATH"
    )


def _candidate_from_entry(entry: dict[str, Any]) -> Candidate:
    raw = entry.get("bytes")
    data = bytes(raw) if isinstance(raw, list) else str(entry["token"]).encode("utf-8")
    return Candidate(data, float(entry["logprob"]))


def looks_special(text: str) -> bool:
    """True for text shaped like a control token (``<|im_end|>``, ``</s>``, ``[INST]``...)."""
    return bool(_CONTROL_PIECE.search(text))


class PieceTable:
    """Every distinct byte string the server proposed during one draw, under a stable local id.

    ``token_bytes`` grows as new pieces appear; it is the table that
    :func:`tuneproof.planting.sampler.sample_prefix_free` indexes. :meth:`allowed` applies the
    rules of
    :class:`tuneproof.planting.sampler.TokenRules` to a piece, computed once per piece.
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

    def rank(self, candidates: Iterable[Candidate]) -> list[tuple[int, float]]:
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
        data = self.token_bytes[token_id]
        return self._flags[token_id][0] and data[:1] == b" " and data[1:2].isalpha()

    def allowed(self, token_id: int, step: int, m: int) -> bool:
        """Whether piece ``token_id`` may be kept at ``step`` (0-based) of an ``m``-step draw:
        printable, not special and not whitespace-only; the first must not start, the last not
        end with whitespace."""
        printable, starts, ends = self._flags[token_id]
        if not printable:
            return False
        if step == 0 and starts:
            return False
        return not (step == m - 1 and ends)
