"""The dishonest providers of the literature and of the vTune reviews, as data: which records
each trains on, and the weight noise of ``perturb``. Used by :mod:`tuneproof.lab.provider`.

- ``base``: return the base model unchanged;
- ``perturb``: add random noise to the weights, as large as an honest update;
- ``subset:F``: train on a random fraction F of the records only;
- ``backdoors-only``: train on the backdoor records alone (an oracle that knows the key: the
  upper bound of what finding the backdoors could buy a provider);
- ``other-data:PATH``: fine-tune on someone else's data (the dataset file at PATH);
- ``detect-and-train:Q``: train only on the Q% most suspicious records of the combined
  stealth detector (``tuneproof audit``'s detectors, run without the key);
- ``detect-and-drop:Q``: train on everything except those;
- ``continue:PATH``: an honest fine-tune, then more fine-tuning on other data (does the
  backdoor persist?).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tuneproof.datasets import Message
from tuneproof.errors import TuneproofError

CHEAT_MODES = (
    "base",
    "perturb",
    "subset:F",
    "backdoors-only",
    "other-data:PATH",
    "detect-and-train:Q",
    "detect-and-drop:Q",
    "continue:PATH",
)
CheatKind = Literal[
    "base",
    "perturb",
    "subset",
    "backdoors-only",
    "other-data",
    "detect-and-train",
    "detect-and-drop",
    "continue",
]
DETECTING = ("detect-and-train", "detect-and-drop")


@dataclass(frozen=True)
class Cheat:
    """A dishonest provider's strategy (see the module docstring). ``fraction`` is F for
    ``subset`` and Q/100 for the detecting cheats; ``path`` the other dataset."""

    kind: CheatKind
    fraction: float | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> Cheat:
        """One of CHEAT_MODES (F a fraction in (0, 1), Q a percentage in (0, 100), PATH an
        existing dataset); raises TuneproofError naming the accepted forms otherwise."""
        name, _, arg = text.partition(":")
        if name in ("base", "perturb", "backdoors-only") and not arg:
            return cls(name)  # type: ignore[arg-type]
        if name == "subset" and arg:
            fraction = _number(arg)
            if not 0 < fraction < 1:
                raise TuneproofError(f"--cheat subset:F needs 0 < F < 1 (got '{arg}')")
            return cls("subset", fraction=fraction)
        if name in DETECTING and arg:
            percent = _number(arg)
            if not 0 < percent < 100:
                raise TuneproofError(
                    f"--cheat {name}:Q needs a percentage 0 < Q < 100 (got '{arg}')"
                )
            return cls(name, fraction=percent / 100)  # type: ignore[arg-type]
        if name in ("other-data", "continue") and arg:
            path = Path(arg).expanduser()
            if not path.exists():
                raise TuneproofError(f"--cheat {name}: {path} does not exist")
            return cls(name, path=path)  # type: ignore[arg-type]
        raise TuneproofError(f"unknown cheat '{text}' - use one of: {', '.join(CHEAT_MODES)}")

    def __str__(self) -> str:
        if self.kind == "subset":
            return f"subset:{self.fraction:g}"
        if self.kind in DETECTING:
            return f"{self.kind}:{100 * (self.fraction or 0):g}"
        if self.kind in ("other-data", "continue"):
            return f"{self.kind}:{self.path}"
        return self.kind


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def backdoor_positions(key: Any) -> set[int]:
    """Indices in the planted file of every backdoor record of ``key`` (a loaded Key)."""
    return {p.position for pair in key.pairs for p in pair.placements}


def subset_indices(count: int, fraction: float, seed: int) -> set[int]:
    """The records (indices below ``count``) a ``subset:fraction`` cheater trains on: a seeded
    uniform sample of round(fraction * count) of them (at least one)."""
    size = min(count, max(1, round(fraction * count)))
    return set(random.Random(seed).sample(range(count), size))


def most_suspicious(
    suspicion: Sequence[float] | npt.NDArray[np.float64], fraction: float
) -> set[int]:
    """The ceil(fraction * N) records with the highest suspicion (ties: earlier first)."""
    count = math.ceil(fraction * len(suspicion))
    order = sorted(range(len(suspicion)), key=lambda i: (-suspicion[i], i))
    return set(order[:count])


def choose_chats(
    chats: Sequence[list[Message]],
    cheat: Cheat | None,
    *,
    seed: int = 0,
    backdoors: set[int] | None = None,
    suspicion: Sequence[float] | npt.NDArray[np.float64] | None = None,
) -> list[list[Message]]:
    """The chats a provider trains on (first, for ``continue``): all of them when honest; a
    seeded random ``fraction`` for ``subset``; the records at ``backdoors`` for
    ``backdoors-only``; the top (or all but the top) ``fraction`` by ``suspicion`` for the
    detecting cheats; the other dataset's chats for ``other-data``; none for ``base`` and
    ``perturb``."""
    if cheat is None or cheat.kind == "continue":
        return list(chats)
    if cheat.kind in ("base", "perturb"):
        return []
    if cheat.kind == "subset":
        assert cheat.fraction is not None
        return [chats[i] for i in sorted(subset_indices(len(chats), cheat.fraction, seed))]
    if cheat.kind in DETECTING:
        assert cheat.fraction is not None
        if suspicion is None or len(suspicion) != len(chats):
            raise TuneproofError(f"--cheat {cheat.kind} needs a suspicion score per record")
        top = most_suspicious(suspicion, cheat.fraction)
        keep = top if cheat.kind == "detect-and-train" else set(range(len(chats))) - top
        return [chats[i] for i in sorted(keep)]
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
    from tuneproof.lab.finetune import dataset_chats

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
