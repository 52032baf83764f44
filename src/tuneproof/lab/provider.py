"""The local fine-tuning provider behind ``tuneproof finetune``: honest, or one of the cheats.

A provider receives a planted dataset and returns a model. The honest one trains on every
record; the cheats (:mod:`tuneproof.lab.cheats`) train on something else, or on nothing.
Training itself (answer-only loss through the chat template, LoRA or full) is
:mod:`tuneproof.lab.finetune`; this module chooses what to train on, runs it, and saves the result
with a manifest (``tuneproof-finetune.json``) that records how the model was made but never a
trigger or signature.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from tuneproof.backends.devices import bf16_supported, training_device
from tuneproof.datasets import Message
from tuneproof.errors import TuneproofError
from tuneproof.lab.cheats import (
    CHEAT_MODES,
    Cheat,
    backdoor_positions,
    choose_chats,
    perturb_weights,
    relative_update,
    subset_indices,
    trained_indices,
)
from tuneproof.lab.finetune import (
    LoraSpec,
    TrainingProgress,
    chat_training_examples,
    dataset_chats,
    save_model_folder,
    train,
)

MANIFEST_NAME = "tuneproof-finetune.json"
__all__ = [
    "CHEAT_MODES",
    "MANIFEST_NAME",
    "Cheat",
    "FinetuneResult",
    "FinetuneSettings",
    "backdoor_positions",
    "choose_chats",
    "finetune",
    "perturb_weights",
    "relative_update",
    "run_provider",
    "save_result",
    "subset_indices",
]
DEFAULT_EPOCHS = 3
DEFAULT_LORA_LR = 2e-3
DEFAULT_FULL_LR = 1e-4
DEFAULT_MAX_LENGTH = 512
DEFAULT_PERTURB_SCALE = 0.02
"""Relative Frobenius norm ||noise|| / ||W|| of ``perturb`` per weight matrix: the size of an
honest default LoRA update (measured: median 0.021 over the matrices of a 3-epoch fine-tune
of the embedded model on 300 planted sample records)."""


@dataclass(frozen=True)
class FinetuneSettings:
    """How to train. ``lr`` None means 2e-3 for LoRA and 1e-4 for a full fine-tune; ``bf16``
    None means bfloat16 autocast when the CPU (AVX512-BF16/AMX) or GPU supports it."""

    lora: bool = True
    epochs: int = DEFAULT_EPOCHS
    lr: float | None = None
    batch_size: int = 8
    seed: int = 0
    bf16: bool | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    perturb_scale: float = DEFAULT_PERTURB_SCALE
    lora_spec: LoraSpec = field(default_factory=LoraSpec)

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LORA_LR if self.lora else DEFAULT_FULL_LR


@dataclass(frozen=True)
class FinetuneResult:
    """What a provider run returned: the model (in memory) and how it was made."""

    model: Any
    tokenizer: Any
    cheat: str | None
    records_offered: int
    records_trained: int
    training_tokens: int
    trained_indices: tuple[int, ...] | None
    """Which offered records were trained on (None: another dataset instead)."""
    seconds: float
    final_loss: float | None
    device: str
    bf16: bool
    settings: FinetuneSettings

    def manifest(self, base: str, data: str) -> dict[str, Any]:
        """The non-secret record written next to a saved model."""
        settings = asdict(self.settings)
        settings["lr"] = self.settings.learning_rate
        settings["lora_spec"] = asdict(self.settings.lora_spec) if self.settings.lora else None
        return {
            "tool": "tuneproof finetune",
            "base": base,
            "data": data,
            "cheat": self.cheat,
            "records_offered": self.records_offered,
            "records_trained": self.records_trained,
            "training_tokens": self.training_tokens,
            "seconds": round(self.seconds, 2),
            "final_loss": self.final_loss,
            "device": self.device,
            "bf16": self.bf16,
            "settings": settings,
        }


def training_copy(base_model: Any, *, share_weights: bool) -> Any:
    """A copy of ``base_model`` to train, the base itself left as it is.

    ``share_weights`` (for LoRA: the base weights stay frozen, and :func:`run_provider` gives
    them storage of their own with :func:`own_weights` before it merges the adapters) gives the
    copy new parameter objects over the base's own storage: the copy costs no weight memory
    (540 MB for the embedded model) while it trains. Otherwise a deep copy.
    """
    if not share_weights:
        return copy.deepcopy(base_model)
    import torch

    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
        for p in base_model.parameters()
    }
    return copy.deepcopy(base_model, memo)


def own_weights(model: Any, base_model: Any) -> Any:
    """``model`` with a copy of each weight it still shares with ``base_model`` (those LoRA
    did not touch: embeddings, norms), so that nothing done to it later reaches the base."""
    shared = {p.data_ptr() for p in base_model.parameters()}
    for parameter in model.parameters():
        if parameter.data_ptr() in shared:
            parameter.data = parameter.data.clone()
    return model


def run_provider(
    base_model: Any,
    base_tokenizer: Any,
    chats: Sequence[list[Message]],
    *,
    settings: FinetuneSettings | None = None,
    cheat: Cheat | None = None,
    backdoors: set[int] | None = None,
    suspicion: Sequence[float] | npt.NDArray[np.float64] | None = None,
    progress: TrainingProgress | None = None,
    threads: int | None = None,
) -> FinetuneResult:
    """Play the provider on ``chats`` (the planted dataset's records, in file order) and return
    the model it hands back. ``base_model`` is never modified: training works on a copy.

    ``backdoors`` (positions in ``chats``) is needed by ``backdoors-only`` only, ``suspicion``
    (one score per chat, higher = more suspicious) by the detecting cheats only. ``continue``
    trains twice with the same settings: on ``chats``, then on its other dataset.
    """
    settings = settings or FinetuneSettings()
    device = training_device()
    bf16 = bf16_supported(device) if settings.bf16 is None else settings.bf16
    start = time.perf_counter()
    strategy = None if cheat is None else cheat.strategy
    share = settings.lora and not (strategy is not None and strategy.perturbs)
    model = training_copy(base_model, share_weights=share)
    picked = trained_indices(
        len(chats), cheat, seed=settings.seed, backdoors=backdoors, suspicion=suspicion
    )
    selected = choose_chats(
        chats, cheat, seed=settings.seed, backdoors=backdoors, suspicion=suspicion
    )
    phases = [selected]
    if strategy is not None and strategy.continues:
        phases.append(choose_chats(chats, Cheat("other-data", path=cheat.path if cheat else None)))
    losses: list[float] = []
    tokens = 0
    if strategy is not None and strategy.perturbs:
        perturb_weights(model, settings.perturb_scale, settings.seed)
    elif selected:

        def on_step(step: int, total: int, loss: float) -> None:
            losses.append(loss)
            if progress is not None:
                progress(step, total, loss)

        for phase in phases:
            examples = chat_training_examples(base_tokenizer, phase, max_length=settings.max_length)
            tokens += sum(len(ids) for ids, _ in examples) * settings.epochs
            model = train(
                model,
                base_tokenizer,
                examples,
                epochs=settings.epochs,
                lr=settings.learning_rate,
                batch_size=settings.batch_size,
                lora=settings.lora_spec if settings.lora else False,
                seed=settings.seed,
                bf16=bf16,
                threads=threads,
                device=device,
                progress=on_step,
            )
            if hasattr(model, "merge_and_unload"):
                # the copy's frozen weights are the base's own storage: merge into copies
                model = own_weights(model, base_model).merge_and_unload()
    elif strategy is None or strategy.trains:
        raise TuneproofError("nothing to train on - the dataset is empty")
    model = own_weights(model.to("cpu").eval(), base_model)
    return FinetuneResult(
        model=model,
        tokenizer=base_tokenizer,
        cheat=None if cheat is None else str(cheat),
        records_offered=len(chats),
        records_trained=sum(len(phase) for phase in phases),
        trained_indices=None if picked is None else tuple(picked),
        training_tokens=tokens,
        seconds=time.perf_counter() - start,
        final_loss=sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        device=device,
        bf16=bf16 and bool(selected),
        settings=settings,
    )


def save_result(result: FinetuneResult, out_dir: Path, *, base: str, data: str) -> Path:
    """Save the returned model as a model folder (merged weights) with its manifest; the
    folder appears atomically. Returns its path."""
    manifest = orjson.dumps(result.manifest(base, data), option=orjson.OPT_INDENT_2)
    return save_model_folder(
        result.model, result.tokenizer, out_dir, extra_files={MANIFEST_NAME: manifest + b"\n"}
    )


def finetune(
    data: str | Path,
    base: str,
    out_dir: str | Path,
    *,
    settings: FinetuneSettings | None = None,
    cheat: Cheat | str | None = None,
    key: str | Path | None = None,
    detectors: Sequence[str] | None = None,
    progress: TrainingProgress | None = None,
) -> tuple[Path, FinetuneResult]:
    """Fine-tune ``base`` ('embedded', an HF folder or a .gguf) on the dataset file ``data``
    (any supported format) as an honest provider or with ``cheat``; save a merged model folder
    at ``out_dir`` (which must not exist) that ``tuneproof verify`` and ``transformers serve``
    load. ``key`` is read only by the oracle cheat ``backdoors-only``; the detecting cheats run
    ``detectors`` (default: every default detector of ``tuneproof audit``) on ``data`` (the base
    model as the reference of those that read one) and combine them by rank average. Returns
    (folder, result).
    """
    from tuneproof.backends.hf import load_hf_model
    from tuneproof.key import load_key

    target = Path(out_dir)
    if target.exists():
        raise TuneproofError(f"{target} already exists - choose another output folder")
    parsed = Cheat.parse(cheat) if isinstance(cheat, str) else cheat
    backdoors = None
    if parsed is not None and parsed.strategy.needs_key:
        if key is None:
            raise TuneproofError(
                "--cheat backdoors-only plays an oracle that knows the backdoors: pass --key"
            )
        backdoors = backdoor_positions(load_key(key))
    chats = dataset_chats(data)
    loaded = load_hf_model(base)
    suspicion = None
    if parsed is not None and parsed.strategy.needs_suspicion:
        from tuneproof.audit import combined_suspicion

        suspicion = combined_suspicion(data, reference_model=loaded, detectors=detectors)
    result = run_provider(
        loaded.model,
        loaded.tokenizer,
        chats,
        settings=settings,
        cheat=parsed,
        backdoors=backdoors,
        suspicion=suspicion,
        progress=progress,
    )
    return save_result(result, target, base=base, data=str(data)), result
