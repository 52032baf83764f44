"""The library's entry points: :func:`plant` a dataset, :func:`verify` a returned model.

They take paths and model specs (or loaded objects), resolve backends through the registry
(:mod:`tuneproof.backends.base`), and return what the command line prints: the
:class:`~tuneproof.planting.planter.PlantSummary` and the :class:`~tuneproof.report.schema.Report`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tuneproof.backends.base import VerifiableModel, recorded_base_model, resolve_model
from tuneproof.key import Key, check_commitment, check_integrity, load_key, parse_commitment
from tuneproof.planting import planter
from tuneproof.planting.planter import PlantSummary
from tuneproof.report.schema import Report
from tuneproof.report.wording import build_report
from tuneproof.verification.key_warnings import key_warnings
from tuneproof.verification.verifier import verify_queries

__all__ = ["load_verifiable", "plant", "verify"]


def plant(input: str | Path, output: str | Path, key: str | Path, **options: Any) -> PlantSummary:
    """Plant secret backdoors into ``input``, writing ``output`` and the secret ``key`` (see
    :func:`tuneproof.planting.planter.plant` for the options); the summary carries the
    warnings of :func:`~tuneproof.verification.key_warnings.key_warnings` for the new key."""
    summary = planter.plant(input, output, key, **options)
    return replace(summary, warnings=(*summary.warnings, *key_warnings(load_key(key))))


def load_verifiable(
    spec: str,
    base_url: str | None = None,
    *,
    base_model: str | None = None,
    journal: str | Path | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    deadline: float | None = None,
) -> VerifiableModel:
    """A backend for ``spec`` from the registry (:func:`tuneproof.backends.base.resolve_model`):
    a local model (``embedded``, HF folder, PEFT adapter folder whose base is ``base_model`` or
    its config's, ``.gguf`` file), or the model ``spec`` on the OpenAI-compatible server at
    ``base_url`` (answers journaled to ``journal`` for resuming - a secret file, mode 0600,
    holding every trigger and answer: delete it once the report is filed; log-probs through
    ``/completions`` echo with prompts rendered by ``chat_template_from``; requests not answered
    within ``deadline`` seconds fail, each as a failed query)."""
    return resolve_model(
        spec,
        base_url=base_url,
        base_model=base_model,
        journal=journal,
        chat_template_from=chat_template_from,
        api_key_env=api_key_env,
        deadline=deadline,
    )


def verify(
    key: str | Path | Key,
    model: str | VerifiableModel,
    *,
    base_url: str | None = None,
    base_model: str | VerifiableModel | None = None,
    journal: str | Path | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    deadline: float | None = None,
    commitment: str | None = None,
    **options: Any,
) -> Report:
    """Verify ``model`` against ``key`` (paths/specs or loaded objects); returns the Report.

    ``base_model`` gives H0-base (and the base of an adapter folder); the server options are
    those of :func:`load_verifiable`; the rest of :func:`verify_queries` (alpha, sequential,
    max_queries, reveal, ...). ``commitment``, the key's commitment as published before
    training, refuses a key that does not match before any model is loaded or queried.
    """
    published = None if commitment is None else parse_commitment(commitment)
    loaded_key = key if isinstance(key, Key) else load_key(key)  # load_key checks integrity
    if isinstance(key, Key):
        check_integrity(key)
    if published is not None:
        check_commitment(loaded_key, published, None if isinstance(key, Key) else key)
    target = (
        load_verifiable(
            model,
            base_url,
            base_model=base_model if isinstance(base_model, str) else None,
            journal=journal,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
            deadline=deadline,
        )
        if isinstance(model, str)
        else model
    )
    if base_model is None and isinstance(model, str):
        base_model = recorded_base_model(model, base_url)
    base = load_verifiable(base_model) if isinstance(base_model, str) else base_model
    record = verify_queries(loaded_key, target, base_model=base, **options)
    checked = {
        "commitment_checked": published is not None,
        "key_integrity": loaded_key.integrity is not None,
    }
    return build_report(record.model_copy(update=checked))
