"""The top next-token candidates of an OpenAI-compatible ``/v1/completions`` answer.

Servers return either the legacy shape (``top_logprobs: [{token string: logprob}]``, e.g.
llama-cpp-python and vLLM) or the chat shape (``content: [{top_logprobs: [{token, logprob,
bytes}]}]``, e.g. llama.cpp's own server). A candidate's byte string is its ``bytes`` array when
the server sends one, else its token string encoded as UTF-8. Which candidates a sampler may keep
is not decided here but by :mod:`tuneproof.planting.tokens` (see
:mod:`tuneproof.planting.server_factory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneproof.errors import GeneratorError


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
