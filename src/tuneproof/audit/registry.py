"""The audit's detectors, by name: a lazy registry (like lm-evaluation-harness's model registry).

A detector is a function ``detector(inp: AuditInput) -> FloatArray``: one suspicion score per
record (higher = more suspicious), computed from the planted file alone, never from the key.
Each is registered by a :class:`DetectorSpec` that names its function as ``"module:function"``,
so that a detector's heavy imports (torch, a sentence embedder, scikit-learn) happen only when it
runs. ``tuneproof audit``, its ``--detectors`` option and the detecting cheats of the local
provider all read :data:`DETECTORS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneproof.errors import TuneproofError
from tuneproof.types import Progress

if TYPE_CHECKING:
    from tuneproof.audit.detectors import AuditRecord
    from tuneproof.audit.scoring import FloatArray


@dataclass
class AuditInput:
    """What every detector may read: the planted file, its records as the detectors see them,
    the same records as chats (the last turn is the answer), a reference model (a spec or a
    loaded HFCausalLM, loaded at most once for every detector that needs it) and a progress
    hook. ``seed`` makes a detector that draws (the learned one) reproducible."""

    planted: Path | None
    records: list[AuditRecord]
    chats: list[list[tuple[str, str]]]
    reference_model: str | Any = "embedded"
    progress: Progress | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    """Per-detector settings by name, e.g. ``{"learned": {"runs": 4}}``."""
    _loaded: Any = field(default=None, repr=False)

    def model(self) -> Any:
        """The reference model, loaded on first use ('embedded', an HF folder, a .gguf) and
        shared by every detector of the run."""
        if self._loaded is None:
            if isinstance(self.reference_model, str):
                from tuneproof.backends.hf import load_hf_model

                self._loaded = load_hf_model(self.reference_model)
            else:
                self._loaded = self.reference_model
        return self._loaded

    def step(self, stage: str, done: int, total: int) -> None:
        """Report progress of a detector's own stage."""
        if self.progress is not None:
            self.progress(stage, done, total)


Detector = Callable[[AuditInput], "FloatArray"]


@dataclass(frozen=True)
class DetectorSpec:
    """One detector: its name, a one-line description (shown in reports and ``--help``), the
    ``"module:function"`` that computes it, whether it reads the reference model, and whether
    ``tuneproof audit`` runs it by default."""

    name: str
    description: str
    target: str
    uses_model: bool = False
    default: bool = True

    def load(self) -> Detector:
        """The detector function, imported now (its module's heavy imports with it); a
        TuneproofError naming the detector when its module or function cannot be loaded."""
        module, _, function = self.target.partition(":")
        try:
            detector: Detector = getattr(importlib.import_module(module), function)
        except ImportError as error:
            raise TuneproofError(
                f"the '{self.name}' detector cannot be loaded: {self.target} failed to import "
                f"({error}) - leave it out with --detectors"
            ) from None
        except AttributeError:
            raise TuneproofError(
                f"the '{self.name}' detector cannot be loaded: {module} has no {function}"
            ) from None
        return detector


DETECTORS: dict[str, DetectorSpec] = {}


def register_detector(spec: DetectorSpec) -> DetectorSpec:
    """Add ``spec`` to :data:`DETECTORS` (a name can be registered once)."""
    if spec.name in DETECTORS:
        raise ValueError(f"detector {spec.name!r} is registered twice")
    DETECTORS[spec.name] = spec
    return spec


def detector_spec(name: str) -> DetectorSpec:
    """The registered detector ``name``; a TuneproofError naming the choices otherwise."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise TuneproofError(
            f"unknown detector '{name}' - choose among: {', '.join(DETECTORS)}"
        ) from None


def default_detectors() -> list[str]:
    """The detectors ``tuneproof audit`` runs when none is named."""
    return [name for name, spec in DETECTORS.items() if spec.default]


# The built-in detectors, in report order.
for _spec in (
    DetectorSpec(
        "repeated",
        "word 6-grams shared with other records (exact and near-duplicate repeats)",
        "tuneproof.audit.detectors:repeated_detector",
    ),
    DetectorSpec(
        "length",
        "answer and prompt length outliers (robust z of log length)",
        "tuneproof.audit.detectors:length_detector",
    ),
    DetectorSpec(
        "format",
        "structure and JSON style unlike both neighbours",
        "tuneproof.audit.detectors:format_detector",
    ),
    DetectorSpec(
        "perplexity",
        "answer NLL per token under a reference model, far from the bulk",
        "tuneproof.audit.model_detectors:perplexity_detector",
        uses_model=True,
    ),
    DetectorSpec(
        "relevance",
        "answer-to-question cosine similarity (all-MiniLM-L6-v2), low",
        "tuneproof.audit.model_detectors:relevance_detector",
    ),
    DetectorSpec(
        "extension",
        "prompt shared with another record's: an exact extension (sorted prefixes) or a "
        "near-duplicate (MinHash LSH on word shingles of prompt and answer)",
        "tuneproof.audit.duplicates:extension_detector",
    ),
    DetectorSpec(
        "naturalness",
        "the last user turn's final tokens far likelier (or less likely) under a reference "
        "model than its beginning",
        "tuneproof.audit.naturalness:naturalness_detector",
        uses_model=True,
    ),
    DetectorSpec(
        "learned",
        "a classifier trained on backdoors the provider plants itself into this file with its "
        "own keys and tuneproof's defaults (Kerckhoffs)",
        "tuneproof.audit.learned:learned_detector",
        uses_model=True,
    ),
):
    register_detector(_spec)
