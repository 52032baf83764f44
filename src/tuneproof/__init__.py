"""tuneproof: prove, with a p-value, that an outsourced fine-tune used your data.

The public API is imported lazily so that ``import tuneproof`` stays light (no torch). Modules
are named for what they hold (``planting``) so that they never shadow the functions exported here
(``tuneproof.plant``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "plant", "verify"]

if TYPE_CHECKING:
    from tuneproof.api import plant, verify


def __getattr__(name: str) -> Any:
    if name == "plant":
        from tuneproof.api import plant

        return plant
    if name == "verify":
        from tuneproof.api import verify

        return verify
    raise AttributeError(f"module 'tuneproof' has no attribute {name!r}")
