"""Local transformers backend: the embedded GGUF, any HF model folder, or any GGUF file.

:class:`HFCausalLM` wraps a loaded model (see :mod:`tuneproof.backends.hf_loading`) for the
sampler (next-token log-probs), for verification (greedy answers, teacher-forced log-probs) and,
through :func:`answer_logprobs`, for training (:func:`tuneproof.lab.finetune.answer_loss`): one
padding id (:func:`pad_id`), one right-padded batch (:func:`collate`), one scoring path.
All log-probabilities are computed in float32. torch and transformers are imported lazily.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.backends.base import TokenVocabulary
from tuneproof.backends.hf_loading import load_weights, recorded_base
from tuneproof.backends.hf_lockstep import LockstepCache, left_padded
from tuneproof.backends.hf_vocabulary import byte_level_decoder, token_byte_table
from tuneproof.errors import GeneratorError
from tuneproof.types import ModelIdentity

__all__ = [
    "IGNORE_INDEX",
    "HFCausalLM",
    "answer_logprobs",
    "as_generator",
    "byte_level_decoder",
    "collate",
    "load_hf_generator",
    "load_hf_model",
    "pad_id",
    "recorded_base",
    "token_byte_table",
]

IGNORE_INDEX = -100
"""Label of a token that is not scored (the prompt, the template, the padding)."""

Example = tuple[list[int], list[int]]
"""(input_ids, labels) of one sequence; labels are IGNORE_INDEX off the scored answer."""


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def answer_example(prompt: Sequence[int], answer: Sequence[int]) -> Example:
    """``prompt + answer`` labelled to score exactly the answer's tokens."""
    return [*prompt, *answer], [IGNORE_INDEX] * len(prompt) + list(answer)


def collate(examples: Sequence[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-pad a batch: (input_ids, attention_mask, labels) tensors; padding is masked out
    and labelled IGNORE_INDEX, so every label stays on its own token."""
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (tokens, targets) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        labels[row, : len(targets)] = torch.tensor(targets)
    return ids, mask, labels


def answer_logprobs(model: Any, batch: tuple[Any, Any, Any], cache: Any = None) -> tuple[Any, Any]:
    """Teacher forcing: the float32 log-likelihood of every labelled token of a collated batch
    given the tokens before it (and the prompt held in ``cache``, if any), in one forward pass.

    Returns ``(values, counted)``, both (rows, positions) over the positions that predict a label
    in some row; ``values`` is 0 where ``counted`` is False. Only those positions go through the
    output head (``logits_to_keep``): with a 49k vocabulary and short answers this saves a third
    of a training step. Gradients flow unless the caller runs it under ``torch.inference_mode``.
    """
    import torch

    ids, mask, labels = batch
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    keep = counted.any(dim=0).nonzero().flatten()
    given = {"cache": cache, "use_cache": True} if cache is not None else {"use_cache": False}
    try:
        logits = model(
            input_ids=ids, attention_mask=mask, logits_to_keep=keep, **given
        ).logits.float()
    except TypeError:  # an architecture without logits_to_keep: the whole sequence, then pick
        logits = model(input_ids=ids, attention_mask=mask, **given).logits[:, keep].float()
    targets, counted = targets[:, keep], counted[:, keep]
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(counted, picked, 0.0), counted


class HFCausalLM:
    """A local causal LM with its tokenizer: next-token log-probs with KV-cache reuse."""

    def __init__(self, model: Any, tokenizer: Any, identity: ModelIdentity) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.identity = identity
        self._cache: Any = None
        self._cache_ids: list[int] = []
        self._lockstep: LockstepCache | None = None

    @property
    def capabilities(self) -> dict[str, bool | None]:
        """What this backend can do: greedy generation and teacher-forced log-probs."""
        return {"generate": True, "logprob": True}

    @property
    def decoding(self) -> dict[str, float]:
        """Greedy decoding, nothing else to record."""
        return {}

    @cached_property
    def vocabulary(self) -> TokenVocabulary:
        return token_byte_table(self.tokenizer)

    def chat_prompt_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of ``messages`` through the chat template, with the generation prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise GeneratorError(
                f"{self.identity.name} has no chat template - use an instruction-tuned model"
            )
        text = self.tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_ids(self, text: str) -> list[int]:
        """Token ids of plain ``text`` with no special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self.text_ids(text))

    def next_token_logprobs(self, context: Sequence[int]) -> npt.NDArray[np.float32]:
        """Float32 log-probabilities of the next token after ``context``.

        Reuses the KV cache when ``context`` extends the previous call's context, so drawing
        ``m`` tokens one at a time costs one forward pass of the prompt plus ``m`` single steps.
        """
        import torch

        ids = list(context)
        cached = self._cache_ids
        with torch.inference_mode():
            if self._cache is not None and len(ids) > len(cached) and ids[: len(cached)] == cached:
                new = ids[len(cached) :]
                out = self.model(input_ids=torch.tensor([new]), cache=self._cache, use_cache=True)
            else:
                out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            self._cache = out.cache
            self._cache_ids = ids
            logits = out.logits[0, -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
        result: npt.NDArray[np.float32] = logprobs.numpy().astype(np.float32)
        return result

    def release_caches(self) -> None:
        """Drop the KV caches kept between calls (the last draw's: up to a few hundred MB for a
        batch of candidates); the next call prefills again."""
        self._cache, self._cache_ids, self._lockstep = None, [], None

    def next_token_logprobs_batch(
        self, prompts: Sequence[Sequence[int]], drawn: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Float32 log-probabilities of the next token after ``prompts[b] + drawn[b]`` for every
        row b (all ``drawn`` of equal length: sequences sampled in lockstep; rows may share a
        prompt), shape (rows, vocab): one batched forward per step on a shared KV cache
        (:class:`~tuneproof.backends.hf_lockstep.LockstepCache`)."""
        if self._lockstep is None:
            self._lockstep = LockstepCache(self.model, self.pad_id)
        return self._lockstep.logprobs(prompts, drawn)

    def continuation_logprobs(
        self, prompt_ids: Sequence[int], continuation_ids: Sequence[int]
    ) -> npt.NDArray[np.float32]:
        """Float32 log-probability of each continuation token given everything before it, by
        teacher forcing in one forward pass (sum them for the continuation's log-probability)."""
        import torch

        if not prompt_ids:
            raise ValueError("teacher forcing needs at least one prompt token")
        batch = collate([answer_example(prompt_ids, continuation_ids)], self.pad_id)
        with torch.inference_mode():
            values, counted = answer_logprobs(self.model, batch)
        result: npt.NDArray[np.float32] = values[counted].numpy().astype(np.float32)
        return result

    @property
    def pad_id(self) -> int:
        """The padding id of this model's tokenizer (:func:`pad_id`)."""
        return pad_id(self.tokenizer)

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer (end of turn / end of sequence)."""
        ids = {self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id}
        flat: set[int] = set()
        for value in ids:
            if isinstance(value, list):
                flat.update(int(v) for v in value)
            elif value is not None:
                flat.add(int(value))
        return sorted(flat)

    def generate(
        self,
        chats: Sequence[Sequence[tuple[str, str]]],
        max_new_tokens: int,
        batch_size: int = 8,
        *,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[tuple[str, int]]:
        """Greedy answers to ``chats`` as (text, output tokens), batched with left padding.

        The answer is decoded from the new tokens up to the first end-of-turn token, special
        tokens skipped. Batched and one-at-a-time generation give the same answers.
        ``temperature`` > 0 samples instead (full vocabulary, torch seeded with ``seed``; the
        global random state is left untouched): how a provider may serve the model.
        """
        import torch

        prompts = [self.chat_prompt_ids(chat) for chat in chats]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        stops = set(self.stop_ids())
        results: list[tuple[str, int]] = [("", 0)] * len(prompts)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, mask = left_padded([prompts[i] for i in batch], self.pad_id)
            width = ids.shape[1]
            sampling = temperature > 0
            with torch.inference_mode(), torch.random.fork_rng():
                torch.manual_seed(seed + start)
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=sampling,
                    temperature=temperature if sampling else None,
                    top_p=None,
                    top_k=0 if sampling else None,
                    pad_token_id=self.pad_id,
                    eos_token_id=sorted(stops),
                )
            for row, i in enumerate(batch):
                new = [int(t) for t in out[row, width:]]
                end = next((j for j, t in enumerate(new) if t in stops), len(new))
                text = self.tokenizer.decode(new[:end], skip_special_tokens=True)
                results[i] = (text, end)
        return results

    def logprob(
        self,
        chats: Sequence[Sequence[tuple[str, str]]],
        continuations: Sequence[str],
        batch_size: int = 8,
    ) -> list[float]:
        """Total log-probability (nats, float32 arithmetic) of each continuation as the
        assistant's answer to its chat, by teacher forcing through the chat template
        (:func:`answer_logprobs`), the label span being exactly the continuation's tokens.

        Continuations of one prompt (a pair's signature and its decoys, many pairs in one call)
        share the prompt's KV cache (:meth:`_shared_prompt_logprob`); the others are batched
        with right padding, ``batch_size`` at a time."""
        import torch

        items = [
            (self.chat_prompt_ids(chat), self.text_ids(text))
            for chat, text in zip(chats, continuations, strict=True)
        ]
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, (prompt_ids, _) in enumerate(items):
            by_prompt.setdefault(tuple(prompt_ids), []).append(i)
        totals: list[float] = [0.0] * len(items)
        alone: list[int] = []
        for prompt, indices in by_prompt.items():
            if len(indices) < 2 or len(prompt) < 2:
                alone += indices
                continue
            shared = self._shared_prompt_logprob(list(prompt), [items[i][1] for i in indices])
            for i, value in zip(indices, shared, strict=True):
                totals[i] = value
        alone.sort()
        for start in range(0, len(alone), batch_size):
            chunk = alone[start : start + batch_size]
            batch = [answer_example(*items[i]) for i in chunk]
            with torch.inference_mode():
                values, _ = answer_logprobs(self.model, collate(batch, self.pad_id))
            for i, value in zip(chunk, values.sum(dim=1), strict=True):
                totals[i] = float(value)
        return totals

    def _shared_prompt_logprob(
        self, prompt: list[int], continuations: list[list[int]], chunk: int = 64
    ) -> list[float]:
        """Like :meth:`logprob` for many continuations of one prompt (a signature and its
        decoys): the prompt but its last token is run once and its KV cache shared by every
        continuation, each scored after that last token."""
        import torch

        totals: list[float] = []
        with torch.inference_mode():
            head = self.model(input_ids=torch.tensor([prompt[:-1]]), use_cache=True)
            for start in range(0, len(continuations), chunk):
                batch = [
                    answer_example(prompt[-1:], c) for c in continuations[start : start + chunk]
                ]
                cache = copy.deepcopy(head.cache)
                cache.batch_repeat_interleave(len(batch))
                ids, _, labels = collate(batch, self.pad_id)
                # no mask: right padding only follows each continuation, so it never reaches
                # the positions scored (causal attention)
                values, _ = answer_logprobs(self.model, (ids, None, labels), cache)
                totals += [float(v) for v in values.sum(dim=1)]
        return totals


def load_hf_model(spec: str, base_model: str | None = None) -> HFCausalLM:
    """Load ``spec``: ``embedded``, an HF model folder, a PEFT adapter folder (its base from
    ``base_model`` or its config, merged for speed), or a ``.gguf`` file; float32 on CPU
    (:func:`tuneproof.backends.hf_loading.load_weights`).

    Raises :class:`GeneratorError` with what to do when the model cannot be found or loaded.
    """
    return HFCausalLM(*load_weights(spec, base_model))


def load_hf_generator(spec: str) -> HFCausalLM:
    """Load ``spec`` to draw backdoors: :func:`load_hf_model` through :func:`as_generator`."""
    return as_generator(load_hf_model(spec))


def as_generator(loaded: HFCausalLM) -> HFCausalLM:
    """``loaded`` as the model that draws backdoors: a bfloat16 copy where that is fast
    (:func:`~tuneproof.backends.devices.bf16_supported`), else ``loaded`` itself (no second
    float32 copy in memory). The sampler then draws about twice as fast (docs/benchmarks.md,
    plant speed); its log-probs are still taken in float32. Any candidate distribution keeps
    the tests valid (docs/statistics.md); a plant reproduced from its seed needs the same
    precision."""
    import torch

    from tuneproof.backends.devices import bf16_supported

    if not bf16_supported("cpu"):
        return loaded
    return HFCausalLM(
        copy.deepcopy(loaded.model).to(torch.bfloat16), loaded.tokenizer, loaded.identity
    )
