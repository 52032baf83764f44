"""The domain types every layer shares: chats, verdicts, query kinds, model identities,
failed queries, progress callbacks and timestamps. Light (pydantic only); imports nothing
else from tuneproof, so that any module may import it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

from pydantic import BaseModel, ConfigDict

Turn: TypeAlias = tuple[str, str]
"""One chat turn as ``(role, content)``; :class:`tuneproof.datasets.Message` is one too."""

Chat: TypeAlias = Sequence[Turn]
"""A conversation as the backends take it: ``(role, content)`` turns, the last one the user's."""

Progress: TypeAlias = Callable[[str, int, int], None]
"""A progress callback: ``(stage, done, total)``; ``stage`` names the work (and may carry a
live figure such as the training loss)."""


class Verdict(StrEnum):
    """The outcome of a verification; also decides the exit code."""

    VERIFIED = "verified"
    NOT_VERIFIED = "not verified"
    INCONCLUSIVE = "inconclusive"


class QueryKind(StrEnum):
    """Which prompt a query sent: a planted backdoor, a held-out control, or a clean carrier."""

    PLANTED = "planted"
    CONTROL = "control"
    CLEAN = "clean"


def now_utc() -> str:
    """The current time as an ISO-8601 UTC string (seconds)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


class ModelIdentity(BaseModel):
    """Which model produced something: enough for a third party to reproduce or audit it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    backend: str
    source: str
    sha256: str | None = None


@dataclass(frozen=True)
class QueryFailure:
    """A query that got no answer, even after retries; ``error`` says why, on one line.

    Backends that can fail per query (HTTP servers) return it in place of that query's
    ``(text, output tokens)`` answer, so that one failed query never hides the others."""

    error: str
