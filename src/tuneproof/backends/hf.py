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
from tuneproof.errors import GeneratorError
from tuneproof.types import ModelIdentity

__all__ = [
    "IGNORE_INDEX",
    "HFCausalLM",
    "answer_logprobs",
    "byte_level_decoder",
    "collate",
    "load_hf_model",
    "pad_id",
    "recorded_base",
    "token_byte_table",
]

IGNORE_INDEX = -100
"""Label of a token that is not scored (the prompt, the template, the padding)."""

Example = tuple[list[int], list[int]]
"""(input_ids, labels) of one sequence; labels are IGNORE_INDEX off the scored answer."""


def byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printed character -> byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_byte_table(tokenizer: Any) -> TokenVocabulary:
    """Return the true byte string of every token of a ``transformers`` fast tokenizer.

    Byte-level BPE (GPT-2, Llama 3, SmolLM) maps printed characters back to bytes; SentencePiece
    style vocabularies map ``▁`` to a space and ``<0xNN>`` to the byte. Added/special tokens get
    their id in ``special_ids`` (they are never sampled).
    """
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    decoder_kind = (
        type(tokenizer.backend_tokenizer.decoder).__name__
        if hasattr(tokenizer, "backend_tokenizer")
        else ""
    )
    special = set(getattr(tokenizer, "all_special_ids", []))
    special.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    table: list[bytes] = []
    if decoder_kind == "ByteLevel":
        byte_of = byte_level_decoder()
        for token in tokens:
            try:
                table.append(bytes(byte_of[ch] for ch in token or ""))
            except KeyError:
                table.append(b"")
    else:
        for token in tokens:
            token = token or ""
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                table.append(bytes([int(token[3:5], 16)]))
            else:
                table.append(token.replace("▁", " ").encode("utf-8"))
    return TokenVocabulary(tuple(table), frozenset(special))


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
        self._batch_cache: Any = None
        self._batch_ids: list[list[int]] = []

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

    def next_token_logprobs_batch(
        self, prompt_ids: Sequence[int], drawn: Sequence[Sequence[int]]
    ) -> npt.NDArray[np.float32]:
        """Float32 log-probabilities of the next token after ``prompt_ids + drawn[b]`` for every
        row b (all ``drawn`` of equal length: sequences sampled in lockstep), shape (B, vocab).

        Reuses a batch KV cache when every row extends the previous call's row by one token."""
        import torch

        rows = [list(prompt_ids) + list(d) for d in drawn]
        cached = self._batch_ids
        with torch.inference_mode():
            extends = len(rows) == len(cached) and all(
                len(r) == len(c) + 1 and r[:-1] == c for r, c in zip(rows, cached, strict=True)
            )
            if self._batch_cache is not None and extends:
                new = torch.tensor([[r[-1]] for r in rows])
                out = self.model(input_ids=new, cache=self._batch_cache, use_cache=True)
                last = out.logits[:, -1]
            elif all(r == rows[0] for r in rows):  # the first step: one prompt, shared
                out = self.model(input_ids=torch.tensor(rows[:1]), use_cache=True)
                out.cache.batch_repeat_interleave(len(rows))
                last = out.logits[:, -1].expand(len(rows), -1)
            else:
                out = self.model(input_ids=torch.tensor(rows), use_cache=True)
                last = out.logits[:, -1]
            self._batch_cache = out.cache
            self._batch_ids = rows
            logprobs = torch.log_softmax(last.float(), dim=-1)
        result: npt.NDArray[np.float32] = logprobs.numpy().astype(np.float32)
        return result

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
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
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
        (:func:`answer_logprobs`); batched with right padding, the label span being exactly the
        continuation's tokens."""
        import torch

        items = [
            (self.chat_prompt_ids(chat), self.text_ids(text))
            for chat, text in zip(chats, continuations, strict=True)
        ]
        if len(items) > 1 and len(items[0][0]) > 1 and all(p == items[0][0] for p, _ in items):
            return self._shared_prompt_logprob(items[0][0], [c for _, c in items])
        totals: list[float] = []
        for start in range(0, len(items), batch_size):
            batch = [answer_example(p, c) for p, c in items[start : start + batch_size]]
            with torch.inference_mode():
                values, _ = answer_logprobs(self.model, collate(batch, self.pad_id))
            totals += [float(v) for v in values.sum(dim=1)]
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
