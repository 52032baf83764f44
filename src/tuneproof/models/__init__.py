"""Model backends behind one small protocol (see ``tuneproof.sampling.NextTokenModel``).

Heavy libraries are imported by the backend modules only, inside the functions that need them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ModelIdentity(BaseModel):
    """Which model produced something: enough for a third party to reproduce or audit it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    backend: str
    source: str
    sha256: str | None = None
