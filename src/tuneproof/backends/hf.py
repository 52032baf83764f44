"""Local transformers backend: the embedded GGUF, any HF model folder, or any GGUF file.

All log-probabilities are computed in float32. torch and transformers are imported lazily.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.backends.base import TokenVocabulary
from tuneproof.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, embedded_gguf_path
from tuneproof.errors import GeneratorError
from tuneproof.types import ModelIdentity


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

        ids = [*prompt_ids, *continuation_ids]
        start = len(prompt_ids)
        if start == 0:
            raise ValueError("teacher forcing needs at least one prompt token")
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
            logprobs = torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)
            picked = logprobs.gather(1, torch.tensor(continuation_ids).unsqueeze(1))[:, 0]
        result: npt.NDArray[np.float32] = picked.numpy().astype(np.float32)
        return result

    @property
    def pad_id(self) -> int:
        """The padding id: the tokenizer's pad token, else its end-of-sequence token."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

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
        assistant's answer to its chat, by teacher forcing through the chat template; batched
        with right padding, the label span being exactly the continuation's tokens."""
        import torch

        items = [
            (self.chat_prompt_ids(chat), self.text_ids(text))
            for chat, text in zip(chats, continuations, strict=True)
        ]
        if len(items) > 1 and all(p == items[0][0] for p, _ in items):
            return self._shared_prompt_logprob(items[0][0], [c for _, c in items])
        totals: list[float] = []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            width = max(len(p) + len(c) for p, c in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (prompt, cont) in enumerate(batch):
                ids[row, : len(prompt) + len(cont)] = torch.tensor([*prompt, *cont])
                mask[row, : len(prompt) + len(cont)] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                logprobs = torch.log_softmax(logits, dim=-1)
            for row, (prompt, cont) in enumerate(batch):
                positions = torch.arange(len(prompt) - 1, len(prompt) + len(cont) - 1)
                picked = logprobs[row, positions, torch.tensor(cont)]
                totals.append(float(picked.sum()))
        return totals

    def _shared_prompt_logprob(
        self, prompt: list[int], continuations: list[list[int]], chunk: int = 64
    ) -> list[float]:
        """Like :meth:`logprob` for many continuations of one prompt (a signature and its
        decoys): the prompt is run once and its KV cache shared by every continuation."""
        import torch

        totals: list[float] = []
        with torch.inference_mode():
            head = self.model(input_ids=torch.tensor([prompt]), use_cache=True)
            first = torch.log_softmax(head.logits[0, -1].float(), dim=-1)
            for start in range(0, len(continuations), chunk):
                batch = continuations[start : start + chunk]
                width = max(len(c) for c in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                for row, cont in enumerate(batch):
                    ids[row, : len(cont)] = torch.tensor(cont)
                cache = copy.deepcopy(head.cache)
                cache.batch_repeat_interleave(len(batch))
                # right padding only follows each continuation, so it never reaches the
                # positions read below (causal attention)
                logits = self.model(input_ids=ids, cache=cache, use_cache=True).logits.float()
                logprobs = torch.log_softmax(logits, dim=-1)
                for row, cont in enumerate(batch):
                    if not cont:
                        totals.append(0.0)
                        continue
                    total = first[cont[0]]
                    if len(cont) > 1:
                        rest = logprobs[row, torch.arange(len(cont) - 1), torch.tensor(cont[1:])]
                        total = total + rest.sum()
                    totals.append(float(total))
        return totals


def adapter_base(folder: Path, base_model: str | None) -> str:
    """The base model spec of a PEFT adapter folder: ``base_model`` or the one its config names,
    which must be available locally ('embedded', a folder or a .gguf file)."""
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    recorded = str(config.get("base_model_name_or_path") or "")
    base = base_model or recorded
    if base in (EMBEDDED_NAME, EMBEDDED_MODEL_ID):
        return EMBEDDED_NAME
    if not base or not Path(base).expanduser().exists():
        raise GeneratorError(
            f"the adapter {folder} was trained on '{recorded or '?'}', which is not available "
            "locally - pass --base-model with the base model's folder, .gguf file or 'embedded'"
        )
    return base


def recorded_base(spec: str) -> str | None:
    """The base model recorded in a PEFT adapter folder's config when it is available locally
    (so that H0-base runs without naming it); None otherwise. Never guessed."""
    folder = Path(spec).expanduser()
    if not (folder / "adapter_config.json").is_file():
        return None
    try:
        return adapter_base(folder, None)
    except GeneratorError:
        return None


def load_hf_model(spec: str, base_model: str | None = None) -> HFCausalLM:
    """Load ``spec``: ``embedded``, an HF model folder, a PEFT adapter folder (its base from
    ``base_model`` or its config, merged for speed), or a ``.gguf`` file; float32 on CPU.

    Raises :class:`GeneratorError` with what to do when the model cannot be found or loaded.
    """
    path = Path(spec).expanduser()
    if spec != EMBEDDED_NAME and path.is_dir() and (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_hf_model(adapter_base(path, base_model))
        try:
            with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                )
                merged = PeftModel.from_pretrained(base.model, str(path)).merge_and_unload()
        except (OSError, ValueError) as exc:
            raise GeneratorError(f"cannot load adapter '{spec}': {exc}") from exc
        merged.eval()
        tokenizer = base.tokenizer
        if (path / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
        identity = ModelIdentity(
            name=f"{path.name} (adapter on {base.identity.name})",
            backend="transformers",
            source=str(path),
            sha256=None,
        )
        return HFCausalLM(merged, tokenizer, identity)
    return _load_plain(spec)


def _load_plain(spec: str) -> HFCausalLM:
    """Load a full model: ``embedded``, an HF model folder or a ``.gguf`` file."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise GeneratorError(
            f"local models need the 'hf' extra ({exc.name} is missing) - "
            "run `pip install 'tuneproof[hf]'`"
        ) from exc
    hf_logging.disable_progress_bar()

    gguf_file: str | None = None
    if spec == EMBEDDED_NAME:
        path = embedded_gguf_path()
        folder, gguf_file, name = path.parent, path.name, EMBEDDED_MODEL_ID
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise GeneratorError(
                f"model '{spec}' not found - give 'embedded', an HF model folder or a .gguf file "
                "(models are never downloaded)"
            )
        if path.is_file() and path.suffix == ".gguf":
            folder, gguf_file, name = path.parent, path.name, path.name
        elif path.is_dir():
            folder, name = path, path.name
        else:
            raise GeneratorError(f"model '{spec}' is neither a folder nor a .gguf file")

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with _quiet_gguf_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"cannot load model '{spec}': {exc}") from exc
    model.eval()
    sha = _file_sha256(folder / gguf_file) if gguf_file else None
    identity = ModelIdentity(name=name, backend="transformers", source=str(path), sha256=sha)
    return HFCausalLM(model, tokenizer, identity)


@contextlib.contextmanager
def _quiet_gguf_progress() -> Iterator[None]:
    """Silence transformers' GGUF de-quantisation bar (a bare tqdm that ignores
    ``disable_progress_bar``): our commands draw their own progress."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original
