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

from tuneproof.audit.detectors import (
    AuditRecord,
    format_anomalies,
    length_outliers,
    repeated_substrings,
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
    "AuditReport",
    "audit",
    "combined_suspicion",
    "detector_scores",
    "read_audit_records",
    "score_detectors",
]

DETECTORS = {
    "repeated": "word 6-grams shared with other records (exact and near-duplicate repeats)",
    "length": "answer and prompt length outliers (robust z of log length)",
    "format": "structure and JSON style unlike both neighbours",
    "perplexity": "answer NLL per token under a reference model, far from the bulk",
    "relevance": "answer-to-question cosine similarity (all-MiniLM-L6-v2), low",
}


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
                description=DETECTORS.get(name, "rank average of the detectors above"),
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
) -> AuditReport:
    """Audit the planted file ``planted`` against its ``key``; return the AuditReport.

    ``detectors`` picks among DETECTORS (default: all). ``reference_model`` is the perplexity
    detector's model: a spec ('embedded', an HF folder, a .gguf) or a loaded HFCausalLM.
    Raises TuneproofError when the key was not made for this file.
    """
    from tuneproof.documents import path_sha256
    from tuneproof.key import load_key

    chosen = list(detectors or DETECTORS)
    unknown = [d for d in chosen if d not in DETECTORS]
    if unknown:
        raise TuneproofError(
            f"unknown detector '{unknown[0]}' - choose among: {', '.join(DETECTORS)}"
        )
    loaded_key = load_key(key)
    if path_sha256(planted) != loaded_key.dataset.planted_sha256:
        raise TuneproofError(
            f"{planted} is not the planted file of {key} (its SHA-256 differs from the one the "
            "key recorded) - audit the file exactly as plant wrote it"
        )
    records, chats = read_audit_records(planted)
    positions = loaded_key.backdoor_positions()
    labels = [i in positions for i in range(len(records))]
    scores = detector_scores(records, chats, chosen, reference_model, progress)
    results = score_detectors(scores, labels)
    best = min(results, key=lambda d: d.cheater_share)
    model_name = None
    if "perplexity" in chosen:
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


def detector_scores(
    records: list[AuditRecord],
    chats: list[list[tuple[str, str]]],
    names: Sequence[str],
    reference_model: str | Any = "embedded",
    progress: Progress | None = None,
) -> dict[str, FloatArray]:
    """Each named detector's suspicion score per record (computed without any key)."""
    scores: dict[str, FloatArray] = {}
    for step, name in enumerate(names):
        if progress is not None:
            progress("detectors", step, len(names))
        scores[name] = _run_detector(name, records, chats, reference_model, progress)
    if progress is not None:
        progress("detectors", len(names), len(names))
    return scores


def combined_suspicion(
    planted: str | Path, *, reference_model: str | Any = "embedded"
) -> FloatArray:
    """What a cheating provider computes without the key: the rank average of every
    detector's score, one value per record of ``planted`` (higher = more suspicious)."""
    records, chats = read_audit_records(planted)
    return rank_average(
        list(detector_scores(records, chats, list(DETECTORS), reference_model).values())
    )


def _run_detector(
    name: str,
    records: list[AuditRecord],
    chats: list[list[tuple[str, str]]],
    reference_model: str | Any,
    progress: Progress | None,
) -> FloatArray:
    if name == "repeated":
        return repeated_substrings(records)
    if name == "length":
        return length_outliers(records)
    if name == "format":
        return format_anomalies(records)
    if name == "perplexity":
        from tuneproof.audit.model_detectors import perplexity_scores
        from tuneproof.backends.hf import load_hf_model

        model = (
            load_hf_model(reference_model) if isinstance(reference_model, str) else reference_model
        )
        return perplexity_scores(records, chats, model, progress=progress)
    from tuneproof.audit.model_detectors import relevance_scores

    return relevance_scores(records)
