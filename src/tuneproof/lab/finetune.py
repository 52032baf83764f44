"""A small local fine-tuning provider: answer-only loss through the chat template, LoRA or full.

Used by the demo, the tests and the benchmarks to play the provider that trains on a planted
file. torch, transformers and peft are imported inside the functions that need them. A typical
run::

    chats = dataset_chats("planted.jsonl")
    examples = chat_training_examples(tokenizer, chats)
    model = train(model, tokenizer, examples, epochs=3, lr=2e-3, lora=True, seed=0)
    save_model_folder(model, tokenizer, "out/")   # loads with backends.hf.load_hf_model("out/")
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneproof.atomic import atomic_directory
from tuneproof.backends.hf import IGNORE_INDEX, Example, answer_logprobs, collate, pad_id
from tuneproof.datasets import DatasetFormat, Message, inspect_dataset, iter_records
from tuneproof.datasets import prompt_and_answer as _prompt_and_answer
from tuneproof.errors import TuneproofError

Chat = Sequence[Message | tuple[str, str] | Mapping[str, str]]
"""A conversation: ``Message`` objects, ``(role, content)`` pairs or ``{"role", "content"}``
dicts; for training the last turn is the assistant answer to learn."""

TrainingProgress = Callable[[int, int, float], None]
"""progress(step, steps, loss) after every optimiser step."""
"""progress(step, total_steps, loss): called after every optimiser step."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter settings; the default puts rank-16 adapters on every linear projection."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


def _turns(chat: Chat) -> list[dict[str, str]]:
    turns = []
    for turn in chat:
        if isinstance(turn, Message):
            role, content = turn.role, turn.content
        elif isinstance(turn, tuple):
            role, content = turn
        else:
            role, content = turn["role"], turn["content"]
        turns.append({"role": role, "content": content})
    return turns


def dataset_chats(path: str | Path, format: DatasetFormat | None = None) -> list[list[Message]]:
    """Every record of a dataset file (any supported format) as a chat whose last turn is the
    answer to learn: the record's prompt up to its last user turn, then that turn's answer."""
    info = inspect_dataset(path, format)
    chats = []
    for record in iter_records(info):
        prompt, answer = _prompt_and_answer(record, info.format)
        chats.append([*prompt, Message("assistant", answer)])
    return chats


def render_chat(tokenizer: Any, chat: Chat, *, add_generation_prompt: bool = False) -> str:
    """``chat`` rendered as text by the tokenizer's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise TuneproofError(
            "the tokenizer has no chat template - fine-tune an instruction-tuned model"
        )
    text = tokenizer.apply_chat_template(
        _turns(chat), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The template already holds every special token: adding BOS/EOS here would duplicate them.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """Ids that close an assistant turn: the tokenizer's end-of-sequence token."""
    eos = tokenizer.eos_token_id
    return set() if eos is None else {int(eos)}


def chat_training_examples(
    tokenizer: Any, records: Iterable[Chat], *, max_length: int | None = None
) -> list[Example]:
    """Tokenise chats for answer-only training.

    The prompt (every turn but the last, with the generation prompt) is tokenised exactly as
    ``HFCausalLM.chat_prompt_ids`` tokenises it for generation, and the rest of the rendered chat
    (the answer and what the template closes it with) on its own, as the model will produce it
    after that prompt. The labels are IGNORE_INDEX everywhere except the answer's tokens up to
    and including its end-of-turn token (what follows it, such as a newline, is not learnt).
    A chat template whose generation prompt is not a prefix of the rendered chat raises
    TuneproofError. ``max_length`` cuts longer sequences on the right (a sequence whose answer
    is cut away entirely is dropped).
    """
    ends = end_of_turn_ids(tokenizer)
    examples: list[Example] = []
    for number, chat in enumerate(records):
        turns = _turns(chat)
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise TuneproofError(
                f"chat {number}: the last turn must be the assistant answer to learn "
                f"(got {turns[-1]['role'] if turns else 'an empty chat'})"
            )
        prompt_text = render_chat(tokenizer, turns[:-1], add_generation_prompt=True)
        full_text = render_chat(tokenizer, turns)
        if not full_text.startswith(prompt_text):
            at = next(
                i for i, (a, b) in enumerate(zip(prompt_text, full_text, strict=False)) if a != b
            )
            raise TuneproofError(
                f"chat {number}: the chat template's generation prompt is not a prefix of the "
                f"rendered conversation (they differ at character {at}: "
                f"{prompt_text[at : at + 12]!r} vs {full_text[at : at + 12]!r}) - the answer "
                "cannot be located, so answer-only labels are impossible with this template"
            )
        prompt = _ids(tokenizer, prompt_text)
        rest = _ids(tokenizer, full_text[len(prompt_text) :])
        end = next((i + 1 for i, token in enumerate(rest) if token in ends), len(rest))
        if end == 0:
            raise TuneproofError(f"chat {number}: the rendered answer has no tokens")
        ids = prompt + rest
        labels = [IGNORE_INDEX] * len(prompt) + rest[:end] + [IGNORE_INDEX] * (len(rest) - end)
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels):
                continue
        examples.append((ids, labels))
    return examples


def answer_loss(model: Any, batch: tuple[Any, Any, Any], *, per_example: bool = False) -> Any:
    """Mean cross-entropy (float32) of the labelled tokens of a collated batch, each token
    predicted from the ones before it; with ``per_example`` one mean per row. The negative of
    the teacher-forced scores of the verification backend
    (:func:`tuneproof.backends.hf.answer_logprobs`)."""
    values, counted = answer_logprobs(model, batch)
    weights = counted.float()
    if per_example:
        return -values.sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    return -values.sum() / weights.sum().clamp(min=1)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: Any, group: int = 16
) -> list[list[int]]:
    """One epoch's batches of example indices: a random order cut into groups of
    ``group * batch_size``, each sorted by length and cut into batches, the batches then
    shuffled. Batches hold examples of similar length, so little compute goes to padding."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches: list[list[int]] = []
    span = group * batch_size
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


PASS_TOKENS = 512
"""Padded tokens (rows x longest row) of one forward and backward pass in training; a batch
longer than that is accumulated over several passes, with the same mean loss and gradients.
Measured on the demo (peak RSS in its first 12 steps): one pass per batch 6.9 GB; passes of
1,024 tokens 4.0 GB, of 768 3.5 GB, of 512 3.2 GB."""


def passes(indices: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """``indices`` cut into consecutive parts whose rows x longest length stay within
    ``budget`` (a single row may exceed it)."""
    parts: list[list[int]] = [[]]
    for i in indices:
        part = parts[-1]
        if part and (len(part) + 1) * max(lengths[i], *(lengths[j] for j in part)) > budget:
            parts.append([i])
        else:
            part.append(i)
    return parts


def _labelled(example: Example) -> int:
    """Tokens of an example that count in the loss (each predicted from the ones before it)."""
    return sum(1 for label in example[1][1:] if label != IGNORE_INDEX)


def with_lora(model: Any, spec: LoraSpec) -> Any:
    """Wrap ``model`` in fresh LoRA adapters (peft); only the adapters are trainable."""
    import warnings

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=(
            spec.target_modules
            if isinstance(spec.target_modules, str)
            else list(spec.target_modules)
        ),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in 5.x
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)


def train(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 8,
    lora: bool | LoraSpec = False,
    seed: int = 0,
    bf16: bool = False,
    warmup: float = 0.1,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    threads: int | None = None,
    device: str = "cpu",
    progress: TrainingProgress | None = None,
) -> Any:
    """Fine-tune ``model`` on ``examples`` with the answer-only loss and return it (in eval mode).

    AdamW with a linear warm-up over the first ``warmup`` share of the steps and a linear decay
    to zero; examples are reshuffled every epoch from ``seed`` into length-grouped batches
    (:func:`length_grouped_batches`), so a run is reproducible on the same machine. ``lora``
    (True or a LoraSpec) trains LoRA adapters and returns the peft model
    (``save_model_folder`` merges it); False trains every weight in place. ``bf16`` runs the
    forward pass under bfloat16 autocast (fast on CPUs with AVX512-BF16); weights, optimiser and
    loss stay float32. ``threads`` sets torch's intra-op threads for the run (restored after):
    one thread is as fast for tiny models and does not fight other processes for the cores.
    ``device`` ("cpu" or "cuda") is where the model is moved and trained; it stays there.
    """
    import torch

    if not examples:
        raise TuneproofError("no training examples - the dataset is empty")
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise TuneproofError(
            f"epochs and batch size must be at least 1 and lr positive (got epochs={epochs}, "
            f"batch_size={batch_size}, lr={lr})"
        )
    with _torch_threads(threads):
        torch.manual_seed(seed)
        model = model.to(device)
        if lora:
            model = with_lora(model, lora if isinstance(lora, LoraSpec) else LoraSpec())
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        total = epochs * math.ceil(len(examples) / batch_size)
        warm = max(1, round(warmup * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser,
            lambda step: (
                (step + 1) / warm if step < warm else (total - step) / max(1, total - warm)
            ),
        )
        shuffler = torch.Generator().manual_seed(seed)
        padding = pad_id(tokenizer)
        model.train()
        step = 0
        lengths = [len(ids) for ids, _ in examples]
        for _ in range(epochs):
            for indices in length_grouped_batches(lengths, batch_size, shuffler):
                optimiser.zero_grad(set_to_none=True)
                labelled = sum(_labelled(examples[i]) for i in indices)
                loss = torch.zeros(())
                # the batch's mean loss, accumulated over passes of bounded size: activations
                # (and the vocabulary-wide logits) stay small for long examples
                for part in passes(indices, lengths, PASS_TOKENS):
                    ids, mask, labels = collate([examples[i] for i in part], padding)
                    batch = (ids.to(device), mask.to(device), labels.to(device))
                    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                        values, _ = answer_logprobs(model, batch)
                    part_loss = -values.sum() / max(1, labelled)
                    part_loss.backward()
                    loss = loss + part_loss.detach().cpu()
                if max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimiser.step()
                schedule.step()
                step += 1
                if progress is not None:
                    progress(step, total, float(loss.detach()))
        model.eval()
    return model


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: unchanged), then restore."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _plain_model(model: Any) -> Any:
    """``model`` without LoRA adapters (merged into the weights, in place) and, when it came
    from a GGUF file (which refuses ``save_pretrained``), rebuilt as a plain float32 model."""
    import torch
    from transformers import AutoModelForCausalLM

    if hasattr(model, "merge_and_unload"):  # a peft model
        model = model.merge_and_unload()
    config = model.config
    if getattr(config, "quantization_config", None) is None and not getattr(
        model, "is_quantized", False
    ):
        return model
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise TuneproofError(
            f"cannot rebuild the model for saving: missing weights {sorted(missing)[:5]}, "
            f"unexpected weights {sorted(unexpected)[:5]}"
        )
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def save_model_folder(
    model: Any,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face model folder (safetensors) that
    ``tuneproof.backends.hf.load_hf_model`` and ``transformers serve`` load; return its path.

    LoRA adapters are merged into the weights first (in place: the peft model passed in now
    holds the merged weights). ``extra_files`` (name -> bytes) are written into the folder too.
    The folder appears atomically, whole; ``out_dir`` must not exist.
    """
    target = Path(out_dir)
    if target.exists():
        raise TuneproofError(f"{target} already exists - choose another output folder")
    plain = _plain_model(model)
    with atomic_directory(target) as tmp:
        tmp.chmod(0o755)  # a model folder, not a secret (mkdtemp makes it private)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, content in (extra_files or {}).items():
            (tmp / name).write_bytes(content)
    return target
