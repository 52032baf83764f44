"""Model backends behind one small protocol (see ``tuneproof.planting.sampler.NextTokenModel``).

Heavy libraries are imported by the backend modules only, inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict


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
