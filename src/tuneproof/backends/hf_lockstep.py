"""Next-token log-probs for many sequences drawn in lockstep, each after its own prompt.

The signature sampler draws the true signature and the decoys of many pairs together: every row
is a prompt (shared by the rows of one pair) and the tokens drawn so far, and every call adds one
token to every row. :class:`LockstepCache` runs that as one batched forward pass per step:

- the first call prefills each *distinct* context once (left-padded, with an attention mask and
  position ids that start at each row's first real token), then copies the KV cache rows to the
  rows that share a context;
- a call whose every row extends the previous call's row by one token runs a single step on the
  cache (one new token per row);
- anything else starts over with a prefill.

Left padding leaves every row's log-probs equal to those of the row alone, up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``rows`` as one left-padded batch: (input_ids, attention_mask) tensors, each row's
    tokens at the end, its padding masked out."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row))
        mask[i, width - len(row) :] = 1
    return ids, mask


class LockstepCache:
    """The KV cache of one lockstep draw over ``model`` (a transformers causal LM)."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self._cache: Any = None
        self._rows: list[list[int]] = []
        self._mask: Any = None
        self._next_position: Any = None

    def logprobs(
        self, prompts: Sequence[Sequence[int]], drawn: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Float32 log-probabilities of the next token after ``prompts[b] + drawn[b]`` for every
        row b, shape (rows, vocab)."""
        import torch

        if len(prompts) != len(drawn) or not drawn:
            raise ValueError("need one prompt per row and at least one row")
        rows = [[*p, *d] for p, d in zip(prompts, drawn, strict=True)]
        with torch.inference_mode():
            extends = self._extends(rows)
            last = self._step([r[-1] for r in rows]) if extends else self._prefill(rows)
            self._rows = rows
            logprobs = torch.log_softmax(last.float(), dim=-1)
        return np.asarray(logprobs.numpy(), dtype=np.float32)

    def _extends(self, rows: list[list[int]]) -> bool:
        return (
            self._cache is not None
            and len(rows) == len(self._rows)
            and all(
                len(r) == len(c) + 1 and r[:-1] == c for r, c in zip(rows, self._rows, strict=True)
            )
        )

    def _prefill(self, rows: list[list[int]]) -> Any:
        """Run each distinct row once (left-padded) and spread its cache to the rows equal to
        it; returns the last logits of every row."""
        import torch

        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(r), len(distinct)) for r in rows]
        contexts = list(distinct)
        ids, mask = left_padded(contexts, self.pad_id)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        index = torch.tensor(owner)
        cache = out.cache
        if len(contexts) != len(rows) or owner != list(range(len(rows))):
            cache.batch_select_indices(index)
        self._cache = cache
        self._mask = mask[index]
        self._next_position = positions[index, -1:] + 1
        return out.logits[index, -1]

    def _step(self, tokens: list[int]) -> Any:
        """One new token per row on the cache; returns the last logits of every row."""
        import torch

        self._mask = torch.cat([self._mask, torch.ones((len(tokens), 1), dtype=torch.long)], 1)
        out = self.model(
            input_ids=torch.tensor(tokens).unsqueeze(1),
            attention_mask=self._mask,
            position_ids=self._next_position,
            cache=self._cache,
            use_cache=True,
        )
        self._cache = out.cache
        self._next_position = self._next_position + 1
        return out.logits[:, -1]
