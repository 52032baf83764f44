"""The local fine-tuning provider behind ``tuneproof finetune``: honest, or one of the cheats.

A provider receives a planted dataset and returns a model. The honest one trains on every
record. The cheats are the dishonest providers of the literature and of the vTune reviews:

- ``base``: return the base model unchanged;
- ``perturb``: add random noise to the weights, as large as an honest update;
- ``subset:F``: train on a random fraction F of the records only;
- ``backdoors-only``: train on the backdoor records alone (an oracle that knows the key: the
  upper bound of what finding the backdoors could buy a provider);
- ``other-data:PATH``: fine-tune on someone else's data (the dataset file at PATH).

Training itself (answer-only loss through the chat template, LoRA or full) is
:mod:`tuneproof.finetune`; this module chooses what to train on, runs it, and saves the result
with a manifest (``tuneproof-finetune.json``) that records how the model was made but never a
trigger or signature.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from tuneproof.datasets import Message
from tuneproof.errors import TuneproofError
from tuneproof.finetune import (
    LoraSpec,
    chat_training_examples,
    dataset_chats,
    save_model_folder,
    train,
)

MANIFEST_NAME = "tuneproof-finetune.json"
CHEAT_MODES = ("base", "perturb", "subset:F", "backdoors-only", "other-data:PATH")
DEFAULT_EPOCHS = 3
DEFAULT_LORA_LR = 2e-3
DEFAULT_FULL_LR = 1e-4
DEFAULT_MAX_LENGTH = 512
DEFAULT_PERTURB_SCALE = 0.02
"""Relative Frobenius norm ||noise|| / ||W|| of ``perturb`` per weight matrix: the size of an
honest default LoRA update (measured: median 0.021 over the matrices of a 3-epoch fine-tune
of the embedded model on 300 planted sample records)."""

CheatKind = Literal["base", "perturb", "subset", "backdoors-only", "other-data"]
Progress = Callable[[int, int, float], None]


@dataclass(frozen=True)
class Cheat:
    """A dishonest provider's strategy (see the module docstring)."""

    kind: CheatKind
    fraction: float | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Cheat:
        """``base``, ``perturb``, ``subset:F`` (0 < F < 1), ``backdoors-only`` or
        ``other-data:PATH``; raises TuneproofError naming the accepted forms otherwise."""
        name, _, arg = text.partition(":")
        if name in ("base", "perturb", "backdoors-only") and not arg:
            return cls(name)  # type: ignore[arg-type]
        if name == "subset" and arg:
            try:
                fraction = float(arg)
            except ValueError:
                fraction = math.nan
            if not 0 < fraction < 1:
                raise TuneproofError(f"--cheat subset:F needs 0 < F < 1 (got '{arg}')")
            return cls("subset", fraction=fraction)
        if name == "other-data" and arg:
            path = Path(arg).expanduser()
            if not path.exists():
                raise TuneproofError(f"--cheat other-data: {path} does not exist")
            return cls("other-data", path=path)
        raise TuneproofError(f"unknown cheat '{text}' - use one of: {', '.join(CHEAT_MODES)}")

    def __str__(self) -> str:
        if self.kind == "subset":
            return f"subset:{self.fraction:g}"
        if self.kind == "other-data":
            return f"other-data:{self.path}"
        return self.kind


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


def bf16_supported(device: str) -> bool:
    """True when bfloat16 autocast is fast here: a GPU that supports it, or a CPU with
    AVX512-BF16 or AMX-BF16 (elsewhere bf16 runs emulated and is slower than float32)."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_device() -> str:
    """``cuda`` when a GPU is present, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backdoor_positions(key: Any) -> set[int]:
    """Indices in the planted file of every backdoor record of ``key`` (a loaded Key)."""
    return {p.position for pair in key.pairs for p in pair.placements}


def subset_indices(count: int, fraction: float, seed: int) -> set[int]:
    """The records (indices below ``count``) a ``subset:fraction`` cheater trains on: a seeded
    uniform sample of round(fraction * count) of them (at least one)."""
    size = min(count, max(1, round(fraction * count)))
    return set(random.Random(seed).sample(range(count), size))


def choose_chats(
    chats: Sequence[list[Message]],
    cheat: Cheat | None,
    *,
    seed: int = 0,
    backdoors: set[int] | None = None,
) -> list[list[Message]]:
    """The chats a provider trains on: all of them when honest; a seeded random ``fraction``
    for ``subset``; the records at ``backdoors`` for ``backdoors-only``; the chats of the
    other dataset for ``other-data``; none for ``base`` and ``perturb``."""
    if cheat is None:
        return list(chats)
    if cheat.kind in ("base", "perturb"):
        return []
    if cheat.kind == "subset":
        assert cheat.fraction is not None
        return [chats[i] for i in sorted(subset_indices(len(chats), cheat.fraction, seed))]
    if cheat.kind == "backdoors-only":
        if backdoors is None:
            raise TuneproofError(
                "--cheat backdoors-only plays an oracle that knows the backdoors: pass --key"
            )
        outside = sorted(i for i in backdoors if i >= len(chats))
        if outside:
            raise TuneproofError(
                f"the key places a backdoor at record {outside[0]} but the dataset has "
                f"{len(chats)} records - is this the planted file of that key?"
            )
        return [chats[i] for i in sorted(backdoors)]
    assert cheat.path is not None
    return dataset_chats(cheat.path)


def perturb_weights(model: Any, scale: float, seed: int) -> None:
    """Add Gaussian noise to every linear weight matrix of ``model`` except the output head,
    in place, with ||noise||_F = ``scale`` * ||W||_F for each matrix."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
                continue
            weight = module.weight
            noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
            noise *= scale * weight.float().norm() / noise.norm().clamp(min=1e-12)
            weight.add_(noise.to(weight.dtype))


def relative_update(before: Any, after: Any) -> list[float]:
    """||W_after - W_before||_F / ||W_before||_F for every shared 2-D weight (sorted): the
    size of a fine-tune's update, which ``perturb`` imitates."""
    old = before.state_dict()
    ratios = []
    for name, tensor in after.state_dict().items():
        if tensor.dim() == 2 and name in old and "lm_head" not in name and "embed" not in name:
            base = old[name].float()
            ratios.append(float((tensor.float() - base).norm() / base.norm().clamp(min=1e-12)))
    return sorted(ratios)


def run_provider(
    base_model: Any,
    base_tokenizer: Any,
    chats: Sequence[list[Message]],
    *,
    settings: FinetuneSettings | None = None,
    cheat: Cheat | None = None,
    backdoors: set[int] | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> FinetuneResult:
    """Play the provider on ``chats`` (the planted dataset's records, in file order) and return
    the model it hands back. ``base_model`` is never modified: training works on a copy.

    ``backdoors`` (positions in ``chats``) is needed by ``backdoors-only`` only.
    """
    settings = settings or FinetuneSettings()
    device = training_device()
    bf16 = bf16_supported(device) if settings.bf16 is None else settings.bf16
    start = time.perf_counter()
    model = copy.deepcopy(base_model)
    selected = choose_chats(chats, cheat, seed=settings.seed, backdoors=backdoors)
    final_loss: float | None = None
    tokens = 0
    if cheat is not None and cheat.kind == "perturb":
        perturb_weights(model, settings.perturb_scale, settings.seed)
    elif selected:
        examples = chat_training_examples(base_tokenizer, selected, max_length=settings.max_length)
        tokens = sum(len(ids) for ids, _ in examples)
        losses: list[float] = []

        def on_step(step: int, total: int, loss: float) -> None:
            losses.append(loss)
            if progress is not None:
                progress(step, total, loss)

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
            model = model.merge_and_unload()
        final_loss = sum(losses[-10:]) / len(losses[-10:])
    elif cheat is None or cheat.kind != "base":
        raise TuneproofError("nothing to train on - the dataset is empty")
    model = model.to("cpu").eval()
    return FinetuneResult(
        model=model,
        tokenizer=base_tokenizer,
        cheat=None if cheat is None else str(cheat),
        records_offered=len(chats),
        records_trained=len(selected),
        training_tokens=tokens * settings.epochs if selected else 0,
        seconds=time.perf_counter() - start,
        final_loss=final_loss,
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
    progress: Progress | None = None,
) -> tuple[Path, FinetuneResult]:
    """Fine-tune ``base`` ('embedded', an HF folder or a .gguf) on the dataset file ``data``
    (any supported format) as an honest provider or with ``cheat``; save a merged model folder
    at ``out_dir`` (which must not exist) that ``tuneproof verify`` and ``transformers serve``
    load. ``key`` is read only by the oracle cheat ``backdoors-only``. Returns (folder, result).
    """
    from tuneproof.key import load_key
    from tuneproof.models.hf import load_hf_model

    target = Path(out_dir)
    if target.exists():
        raise TuneproofError(f"{target} already exists - choose another output folder")
    parsed = Cheat.parse(cheat) if isinstance(cheat, str) else cheat
    backdoors = None
    if parsed is not None and parsed.kind == "backdoors-only":
        if key is None:
            raise TuneproofError(
                "--cheat backdoors-only plays an oracle that knows the backdoors: pass --key"
            )
        backdoors = backdoor_positions(load_key(key))
    chats = dataset_chats(data)
    loaded = load_hf_model(base)
    result = run_provider(
        loaded.model,
        loaded.tokenizer,
        chats,
        settings=settings,
        cheat=parsed,
        backdoors=backdoors,
        progress=progress,
    )
    return save_result(result, target, base=base, data=str(data)), result
