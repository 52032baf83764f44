"""What verification sends: the planted, control and clean queries built from a key (each
query knows its pair and what it is for; what comes back: `verification.answers`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuneproof.key import ChatMessage, Key, SignaturePair
from tuneproof.types import QueryKind

DEFAULT_CLEAN_QUERIES = 5

Chat = list[tuple[str, str]]


@dataclass(frozen=True)
class Query:
    """One prompt to send, and what it is for."""

    kind: QueryKind
    pair: SignaturePair
    replica: int | None
    chat: Chat


def _chat(messages: Sequence[ChatMessage]) -> Chat:
    return [(m.role, m.content) for m in messages]


def _without_trigger(messages: Sequence[ChatMessage], trigger: str) -> Chat:
    """The carrier's own prompt: the triggered prompt with the trigger (and the one space that
    joined it) taken out of the last turn; it sits at the end or before a prompt separator."""
    chat = _chat(messages)
    role, content = chat[-1]
    at = content.rfind(trigger)
    if at >= 0:
        start = at - 1 if at > 0 and content[at - 1] == " " else at
        content = content[:start] + content[at + len(trigger) :]
    return [*chat[:-1], (role, content)]


def build_queries(key: Key, clean_queries: int = DEFAULT_CLEAN_QUERIES) -> list[Query]:
    """Planted (every placement), control (every held-out pair) and clean queries, in that
    order. Clean queries are the first placements' carrier prompts without their trigger (none
    for a pair planted with no trigger: its carrier's prompt is its planted query)."""
    queries = [
        Query(QueryKind.PLANTED, pair, replica, _chat(placement.prompt))
        for pair in key.pairs
        for replica, placement in enumerate(pair.placements)
    ]
    queries += [
        Query(QueryKind.CONTROL, pair, None, _chat(pair.control_prompt or []))
        for pair in key.controls
    ]
    placements = [(pair, p) for pair in key.pairs if pair.trigger for p in pair.placements]
    for pair, placement in placements[:clean_queries]:
        queries.append(
            Query(QueryKind.CLEAN, pair, None, _without_trigger(placement.prompt, pair.trigger))
        )
    return queries
