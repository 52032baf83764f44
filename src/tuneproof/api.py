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
from tuneproof.key import Key, load_key
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
) -> VerifiableModel:
    """A backend for ``spec`` from the registry (:func:`tuneproof.backends.base.resolve_model`):
    a local model (``embedded``, HF folder, PEFT adapter folder whose base is ``base_model`` or
    its config's, ``.gguf`` file), or the model ``spec`` on the OpenAI-compatible server at
    ``base_url`` (answers journaled to ``journal`` for resuming; log-probs through
    ``/completions`` echo with prompts rendered by ``chat_template_from``)."""
    return resolve_model(
        spec,
        base_url=base_url,
        base_model=base_model,
        journal=journal,
        chat_template_from=chat_template_from,
        api_key_env=api_key_env,
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
    **options: Any,
) -> Report:
    """Verify ``model`` against ``key`` (paths/specs or loaded objects); returns the Report.

    ``base_model`` gives H0-base (and the base of an adapter folder); the server options are
    those of :func:`load_verifiable`; the rest of :func:`verify_queries` (alpha, sequential,
    max_queries, reveal, ...).
    """
    loaded_key = key if isinstance(key, Key) else load_key(key)
    target = (
        load_verifiable(
            model,
            base_url,
            base_model=base_model if isinstance(base_model, str) else None,
            journal=journal,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
        )
        if isinstance(model, str)
        else model
    )
    if base_model is None and isinstance(model, str):
        base_model = recorded_base_model(model, base_url)
    base = load_verifiable(base_model) if isinstance(base_model, str) else base_model
    return build_report(verify_queries(loaded_key, target, base_model=base, **options))
