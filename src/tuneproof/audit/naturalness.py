"""The 'naturalness' detector: does the end of the last user turn read like its beginning?

A trigger is the generator's own nucleus continuation of the carrier's last user turn (a few
tokens, trimmed to a sentence end), appended to it. Under a reference model like the generator
those final tokens are far likelier than the human text before them. The detector scores, per
record, the mean negative log-likelihood per token of the last user turn's earlier tokens minus
that of its final tokens (:data:`TAIL_TOKENS`, or half the turn when it is shorter: chat prompts
are often as short as a trigger), each token predicted from the turn's raw text before it (no
chat template: the generator continued the raw text too). A turn too short to compare scores 0.
On 160 sample records with a 6-token trigger of the embedded model appended to every fourth,
this scored AUROC 0.83 with the embedded model as reference (a fixed 12-token tail with a
6-token head: 0.50, every sample turn being shorter). torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneproof.audit.scoring import FloatArray
from tuneproof.types import Progress

if TYPE_CHECKING:
    from tuneproof.audit.registry import AuditInput

TAIL_TOKENS = 12
"""The turn's final tokens compared with the rest (a default trigger is at most 6)."""
MIN_COMPARED = 3
"""Scored tokens each side of the comparison needs (else the score is 0)."""
MAX_TOKENS = 256
"""A longer turn is scored on its last MAX_TOKENS tokens."""
BATCH_SIZE = 16


def last_user_turn(chat: Sequence[tuple[str, str]]) -> str:
    """The text of the chat's last user turn before its answer ('' when it has none)."""
    for role, text in reversed(chat[:-1]):
        if role == "user":
            return text
    return ""


def token_nll(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> list[FloatArray]:
    """Each text's per-token negative log-likelihood (nats) under ``model`` (an HFCausalLM),
    every token after the first predicted from the text's tokens before it; the last
    :data:`MAX_TOKENS` tokens of a longer text."""
    import torch

    from tuneproof.backends.hf import IGNORE_INDEX, answer_logprobs, collate

    ids = [model.text_ids(text)[-MAX_TOKENS:] if text else [] for text in texts]
    out: list[FloatArray] = [np.zeros(0) for _ in texts]
    order = sorted((i for i in range(len(ids)) if len(ids[i]) >= 2), key=lambda i: len(ids[i]))
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            examples = [(ids[i], [IGNORE_INDEX, *ids[i][1:]]) for i in batch]
            values, counted = answer_logprobs(model.model, collate(examples, model.pad_id))
            for row, index in enumerate(batch):
                out[index] = -values[row][counted[row]].double().numpy()
            if progress is not None:
                progress("naturalness", min(start + batch_size, len(order)), len(order))
    return out


def tail_contrast(nll: FloatArray, tail: int = TAIL_TOKENS) -> float:
    """Mean NLL of the tokens before the last ``min(tail, len(nll) // 2)`` minus the mean NLL
    of those (positive: the end is likelier than the beginning); 0 when either side would have
    fewer than :data:`MIN_COMPARED` tokens."""
    size = min(tail, len(nll) // 2)
    if size < MIN_COMPARED:
        return 0.0
    return float(nll[:-size].mean() - nll[-size:].mean())


def naturalness_scores(
    chats: Sequence[Sequence[tuple[str, str]]],
    model: Any,
    *,
    tail: int = TAIL_TOKENS,
    progress: Progress | None = None,
) -> FloatArray:
    """Per chat: :func:`tail_contrast` of its last user turn under ``model``."""
    texts = [last_user_turn(chat).rstrip() for chat in chats]
    nlls = token_nll(model, texts, progress=progress)
    return np.array([tail_contrast(nll, tail) for nll in nlls], dtype=float)


def naturalness_detector(inp: AuditInput) -> FloatArray:
    """The registry's 'naturalness' detector: :func:`naturalness_scores` under the run's
    reference model (``options["naturalness"]["tail"]`` overrides :data:`TAIL_TOKENS`)."""
    tail = int(inp.options.get("naturalness", {}).get("tail", TAIL_TOKENS))
    return naturalness_scores(inp.chats, inp.model(), tail=tail, progress=inp.progress)
