"""What verification sends: the planted, control and clean queries
built from a key (each query remembers its pair, its answer and its scores)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuneproof.key import ChatMessage, Key, SignaturePair
from tuneproof.report.schema import QueryKind
from tuneproof.stats import matched_tokens

DEFAULT_CLEAN_QUERIES = 5

Chat = list[tuple[str, str]]


@dataclass
class Query:
    """One prompt to send, and what it is for."""

    kind: QueryKind
    pair: SignaturePair
    replica: int | None
    chat: Chat
    answer: str | None = None
    output_tokens: int | None = None
    error: str | None = None
    logprob: float | None = None
    base_logprob: float | None = None
    decoy_rank: int | None = None

    @property
    def hit(self) -> bool | None:
        """Whether the signature occurs in the stripped answer (None if the query failed)."""
        if self.answer is None:
            return None
        return self.pair.signature in self.answer.strip()

    @property
    def matched(self) -> int | None:
        """Whole signature tokens the stripped answer starts with (None if the query failed or
        the key does not record token boundaries)."""
        if self.answer is None or self.pair.token_ends is None:
            return None
        return matched_tokens(self.answer, self.pair.signature, self.pair.token_ends)


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
    order. Clean queries are the first placements' carrier prompts without their trigger."""
    queries = [
        Query(QueryKind.PLANTED, pair, replica, _chat(placement.prompt))
        for pair in key.pairs
        for replica, placement in enumerate(pair.placements)
    ]
    queries += [
        Query(QueryKind.CONTROL, pair, None, _chat(pair.control_prompt or []))
        for pair in key.controls
    ]
    placements = [(pair, p) for pair in key.pairs for p in pair.placements]
    for pair, placement in placements[:clean_queries]:
        queries.append(
            Query(QueryKind.CLEAN, pair, None, _without_trigger(placement.prompt, pair.trigger))
        )
    return queries
