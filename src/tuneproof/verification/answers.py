"""What came back for each query: the answer (or why there was none) and the scores, as an
immutable record built once per step (asked, then scored, then ranked among decoys), and its
outcome as the report stores it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tuneproof.key import SignaturePair
from tuneproof.stats import answer_rank, matched_tokens
from tuneproof.types import QueryFailure, QueryKind
from tuneproof.verification.queries import Chat, Query
from tuneproof.verification.result import QueryOutcome


@dataclass(frozen=True)
class Answered:
    """A query and what came back: ``answer`` (None when the query failed, with ``error``
    saying why), the signature's log-likelihood under the verified model (``logprob``) and the
    base model (``base_logprob``), and its ``decoy_rank`` among its decoys."""

    query: Query
    answer: str | None = None
    output_tokens: int | None = None
    error: str | None = None
    logprob: float | None = None
    base_logprob: float | None = None
    decoy_rank: int | None = None

    @classmethod
    def of(cls, query: Query, item: tuple[str, int] | QueryFailure) -> Answered:
        """``query`` with a backend's answer ``(text, output tokens)`` or its failure."""
        if isinstance(item, QueryFailure):
            return cls(query, error=item.error)
        text, tokens = item
        return cls(query, answer=text, output_tokens=tokens)

    @property
    def kind(self) -> QueryKind:
        return self.query.kind

    @property
    def pair(self) -> SignaturePair:
        return self.query.pair

    @property
    def replica(self) -> int | None:
        return self.query.replica

    @property
    def chat(self) -> Chat:
        return self.query.chat

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

    @property
    def answer_rank(self) -> int | None:
        """The signature's rank among its decoys by how far the answer follows each
        (:func:`~tuneproof.stats.answer_rank`); None if the query failed or the pair has no
        decoys."""
        if self.answer is None or not self.pair.decoys:
            return None
        return answer_rank(self.answer, self.pair.signature, self.pair.decoys)

    def outcome(self, *, reveal: bool) -> QueryOutcome:
        """This answer as the report stores it (the answer's text only when ``reveal``; the
        error without the pair's secrets unless ``reveal``)."""
        return QueryOutcome(
            kind=self.kind,
            pair_id=self.pair.pair_id,
            replica=self.replica,
            hit=self.hit,
            matched_tokens=self.matched,
            decoy_rank=self.decoy_rank,
            answer_rank=self.answer_rank,
            answer=self.answer if reveal else None,
            answer_chars=len(self.answer.strip()) if self.answer is not None else 0,
            output_tokens=self.output_tokens,
            signature_logprob=self.logprob,
            base_signature_logprob=self.base_logprob,
            error=self.error if reveal or self.error is None else self._redacted(self.error),
        )

    def _redacted(self, error: str) -> str:
        """``error`` without the pair's trigger and signature (a server may quote the prompt
        or its answer in an error message)."""
        for secret, name in (
            (self.pair.trigger, "[trigger]"),
            (self.pair.signature, "[signature]"),
        ):
            if secret:
                error = error.replace(secret, name)
        return error


def unanswered(queries: Sequence[Query | Answered]) -> list[Answered]:
    """``queries`` as answers not yet received (what a plan is made from)."""
    return [q if isinstance(q, Answered) else Answered(q) for q in queries]
