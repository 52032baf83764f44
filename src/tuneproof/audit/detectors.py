"""The provider's detectors that need no model: repeated long substrings, format anomalies
and length outliers. Each returns one suspicion score per record (higher = more suspicious),
computed from the planted file alone, never from the key. The ``*_detector`` functions are the
registry's entry points (:mod:`tuneproof.audit.registry`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tuneproof.audit.scoring import FloatArray, robust_z
from tuneproof.datasets.style import StyleFingerprint

if TYPE_CHECKING:
    from tuneproof.audit.registry import AuditInput

NGRAM_WORDS = 6
_WORD_RE = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class AuditRecord:
    """What the detectors see of one record: its prompt text (every turn before the answer),
    its answer, its structure (roles, keys) and, for text files, its JSON style."""

    prompt: str
    answer: str
    structure: tuple[str, ...]
    style: StyleFingerprint | None = None


def _shingles(text: str, n: int = NGRAM_WORDS) -> set[tuple[str, ...]]:
    """Word n-grams of ``text``, lower-cased and without punctuation, so that near-duplicates
    (other case, spacing or punctuation) share them."""
    words = _WORD_RE.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if len(words) >= 3 else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def repeated_substrings(records: Sequence[AuditRecord], n: int = NGRAM_WORDS) -> FloatArray:
    """For each record, how many other records share its most widely shared word n-gram
    (prompt and answer together): replicas of one trigger or signature share long n-grams."""
    shingles = [_shingles(f"{r.prompt}\n{r.answer}", n) for r in records]
    frequency: Counter[tuple[str, ...]] = Counter()
    for grams in shingles:
        frequency.update(grams)
    return np.array(
        [max((frequency[g] for g in grams), default=1) - 1 for grams in shingles], float
    )


def length_outliers(records: Sequence[AuditRecord]) -> FloatArray:
    """Robust z-score of each answer's log length in characters and of its prompt's (the
    larger of the two): backdoor answers and triggered prompts may stand out by length."""
    answers = robust_z(np.log1p([len(r.answer) for r in records]))
    prompts = robust_z(np.log1p([len(r.prompt) for r in records]))
    return np.maximum(answers, prompts)


def format_anomalies(records: Sequence[AuditRecord]) -> FloatArray:
    """How many ways each record differs from both of its neighbours: its structure (roles,
    fields) and, in text files, its JSON style fingerprint (separators, escaping, key order).
    An inserted record written unlike its neighbours would score high."""
    scores = np.zeros(len(records))
    for i, record in enumerate(records):
        neighbours = [records[j] for j in (i - 1, i + 1) if 0 <= j < len(records)]
        if not neighbours:
            continue
        differences = []
        for other in neighbours:
            count = int(record.structure != other.structure)
            if record.style is not None and other.style is not None:
                count += len(record.style.conflicts(other.style))
            differences.append(count)
        scores[i] = min(differences)
    return scores


def repeated_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'repeated' detector: :func:`repeated_substrings` of the records."""
    return repeated_substrings(inp.records)


def length_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'length' detector: :func:`length_outliers` of the records."""
    return length_outliers(inp.records)


def format_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'format' detector: :func:`format_anomalies` of the records."""
    return format_anomalies(inp.records)
