"""The stealth audit: run a provider's detectors on a planted file *without* the key, then
score them *with* it (``tuneproof audit PLANTED --key KEY``).

A positive verdict proves the model depends on the planted records; a cheater who can find the
backdoors can train on them alone. The audit tells the user, before upload, how exposed the
plant is: per detector, the AUROC of backdoor vs clean records, how many backdoors survive if
the provider drops its top 1/5/10% most suspicious records, and the smallest share of the data
a cheater must train on (in its detector's order) to keep every backdoor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tuneproof.audit.detectors import AuditRecord
from tuneproof.audit.registry import (
    DETECTORS,
    AuditInput,
    DetectorSpec,
    default_detectors,
    detector_spec,
    register_detector,
)
from tuneproof.audit.report import AuditReport, DetectorResult, warnings_for
from tuneproof.audit.scoring import (
    DROP_SHARES,
    FloatArray,
    auroc,
    cheater_share,
    rank_average,
    survivors,
)
from tuneproof.errors import TuneproofError
from tuneproof.types import Progress

__all__ = [
    "DETECTORS",
    "AuditInput",
    "AuditReport",
    "DetectorSpec",
    "audit",
    "combined_suspicion",
    "default_detectors",
    "detector_scores",
    "detector_spec",
    "read_audit_records",
    "register_detector",
    "score_detectors",
]


def read_audit_records(
    planted: str | Path,
) -> tuple[list[AuditRecord], list[list[tuple[str, str]]]]:
    """Every record of ``planted`` (any supported format) as the detectors see it, and as a
    chat whose last turn is the answer (for the perplexity detector)."""
    from tuneproof.datasets import Container, inspect_dataset, iter_records, prompt_and_answer
    from tuneproof.datasets.style import style_fingerprint

    info = inspect_dataset(planted)
    raw_lines: dict[int, bytes] = {}
    if info.container is Container.JSONL:
        with Path(planted).open("rb") as handle:
            raw_lines = {number: line for number, line in enumerate(handle, start=1)}
    records, chats = [], []
    for record in iter_records(info):
        prompt, answer = prompt_and_answer(record, info.format)
        raw = raw_lines.get(record.line)
        records.append(
            AuditRecord(
                prompt="\n".join(m.content for m in prompt if m.role != "system"),
                answer=answer,
                structure=(*sorted(record.data), *(m.role for m in prompt)),
                style=style_fingerprint(raw) if raw is not None else None,
            )
        )
        chats.append([*((m.role, m.content) for m in prompt), ("assistant", answer)])
    return records, chats


def score_detectors(scores: dict[str, FloatArray], labels: Sequence[bool]) -> list[DetectorResult]:
    """Every detector's result, plus the combined detector (rank average) when there are two
    or more. A provider can sort a detector's scores either way without knowing the key, so a
    detector whose AUROC is below 0.5 is scored in the reversed direction (``direction`` =
    "low": the backdoors are the *least* suspicious by the raw score) and reports 1 - AUROC."""
    named = dict(scores)
    if len(named) >= 2:
        named["combined"] = rank_average(list(scores.values()))
    results = []
    for name, values in named.items():
        area = auroc(values, labels)
        direction: Literal["high", "low"] = "high"
        if area < 0.5:  # the provider can sort either way: report the revealing direction
            values, area, direction = -np.asarray(values), 1.0 - area, "low"
        left = survivors(values, labels, DROP_SHARES)
        results.append(
            DetectorResult(
                name=name,
                description=(
                    DETECTORS[name].description
                    if name in DETECTORS
                    else "rank average of the detectors above"
                ),
                auroc=area,
                direction=direction,
                survivors={f"{share:g}": count for share, count in left.items()},
                cheater_share=cheater_share(values, labels),
            )
        )
    return results


def audit(
    planted: str | Path,
    key: str | Path,
    *,
    detectors: Sequence[str] | None = None,
    reference_model: str | Any = "embedded",
    progress: Progress | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> AuditReport:
    """Audit the planted file ``planted`` against its ``key``; return the AuditReport.

    ``detectors`` picks among the registered detectors (:data:`DETECTORS`; default:
    :func:`default_detectors`). ``reference_model`` is the model of the detectors that read one
    (``uses_model``): a spec ('embedded', an HF folder, a .gguf) or a loaded HFCausalLM, loaded
    once. ``seed`` and ``options`` (per-detector settings by name) reach every detector through
    its :class:`AuditInput`. Raises TuneproofError for an unknown detector, one that cannot be
    loaded, or a key that was not made for this file.
    """
    from tuneproof.documents import path_sha256
    from tuneproof.key import load_key

    specs = [detector_spec(name) for name in (detectors or default_detectors())]
    loaded_key = load_key(key)
    if path_sha256(planted) != loaded_key.dataset.planted_sha256:
        raise TuneproofError(
            f"{planted} is not the planted file of {key} (its SHA-256 differs from the one the "
            "key recorded) - audit the file exactly as plant wrote it"
        )
    records, chats = read_audit_records(planted)
    positions = loaded_key.backdoor_positions()
    labels = [i in positions for i in range(len(records))]
    inp = AuditInput(
        Path(planted), records, chats, reference_model, progress, seed, dict(options or {})
    )
    scores = detector_scores(inp, [spec.name for spec in specs])
    results = score_detectors(scores, labels)
    best = min(results, key=lambda d: d.cheater_share)
    model_name = None
    if any(spec.uses_model for spec in specs):
        model_name = (
            reference_model
            if isinstance(reference_model, str)
            else str(getattr(getattr(reference_model, "identity", None), "name", "model"))
        )
    return AuditReport(
        planted=str(planted),
        records=len(records),
        backdoors=sum(labels),
        reference_model=model_name,
        detectors=results,
        best_cheater_share=best.cheater_share,
        best_cheater_detector=best.name,
        warnings=warnings_for(results),
    )


def detector_scores(inp: AuditInput, names: Sequence[str]) -> dict[str, FloatArray]:
    """Each named detector's suspicion score per record of ``inp`` (computed without any key),
    each detector imported only now (:meth:`DetectorSpec.load`); a TuneproofError for a name
    that is not registered, a detector that cannot be loaded, or one that returns a score
    count other than the record count."""
    specs = [detector_spec(name) for name in names]
    scores: dict[str, FloatArray] = {}
    for step, spec in enumerate(specs):
        inp.step("detectors", step, len(specs))
        values = np.asarray(spec.load()(inp), dtype=float)
        if values.shape != (len(inp.records),):
            raise TuneproofError(
                f"the '{spec.name}' detector gave {values.shape} scores for "
                f"{len(inp.records)} records"
            )
        scores[spec.name] = values
    inp.step("detectors", len(specs), len(specs))
    return scores


def combined_suspicion(
    planted: str | Path,
    *,
    reference_model: str | Any = "embedded",
    detectors: Sequence[str] | None = None,
) -> FloatArray:
    """What a cheating provider computes without the key: the rank average of the scores of
    ``detectors`` (default: :func:`default_detectors`), one value per record of ``planted``
    (higher = more suspicious)."""
    records, chats = read_audit_records(planted)
    inp = AuditInput(Path(planted), records, chats, reference_model)
    names = list(detectors or default_detectors())
    return rank_average(list(detector_scores(inp, names).values()))
