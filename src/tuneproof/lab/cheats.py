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
from typing import Any

import numpy as np
import numpy.typing as npt

from tuneproof.datasets import Message
from tuneproof.errors import TuneproofError


@dataclass(frozen=True)
class Strategy:
    """One cheat of the registry: its name, the argument it takes (``""``: none, ``"F"``: a
    fraction in (0, 1), ``"Q"``: a percentage in (0, 100), ``"PATH"``: an existing dataset),
    what it needs, and which of the offered records it trains on (:meth:`indices`; None
    when it trains on its other dataset instead)."""

    name: str
    arg: str = ""
    trains: bool = True
    """False for the cheats that train on nothing (``base``, ``perturb``)."""
    perturbs: bool = False
    continues: bool = False
    """Train on the offered records, then on the other dataset (``continue``)."""
    needs_key: bool = False
    needs_suspicion: bool = False

    @property
    def form(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name

    def indices(
        self,
        cheat: Cheat,
        count: int,
        *,
        seed: int,
        backdoors: set[int] | None,
        suspicion: Sequence[float] | npt.NDArray[np.float64] | None,
    ) -> list[int] | None:
        """The offered records (indices below ``count``) this cheat trains on first."""
        if not self.trains:
            return []
        return list(range(count))


CHEATS: dict[str, Strategy] = {}


def register_cheat(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to the registry under its name."""
    CHEATS[strategy.name] = strategy
    return strategy


@dataclass(frozen=True)
class _Subset(Strategy):
    def indices(self, cheat: Cheat, count: int, *, seed: int, **_: Any) -> list[int]:
        assert cheat.fraction is not None
        return sorted(subset_indices(count, cheat.fraction, seed))


@dataclass(frozen=True)
class _Oracle(Strategy):
    def indices(
        self, cheat: Cheat, count: int, *, backdoors: set[int] | None, **_: Any
    ) -> list[int]:
        if backdoors is None:
            raise TuneproofError(
                "--cheat backdoors-only plays an oracle that knows the backdoors: pass --key"
            )
        outside = sorted(i for i in backdoors if i >= count)
        if outside:
            raise TuneproofError(
                f"the key places a backdoor at record {outside[0]} but the dataset has "
                f"{count} records - is this the planted file of that key?"
            )
        return sorted(backdoors)


@dataclass(frozen=True)
class _Detecting(Strategy):
    keep_suspicious: bool = True

    def indices(
        self,
        cheat: Cheat,
        count: int,
        *,
        suspicion: Sequence[float] | npt.NDArray[np.float64] | None,
        **_: Any,
    ) -> list[int]:
        assert cheat.fraction is not None
        if suspicion is None or len(suspicion) != count:
            raise TuneproofError(f"--cheat {cheat.kind} needs a suspicion score per record")
        top = most_suspicious(suspicion, cheat.fraction)
        return sorted(top if self.keep_suspicious else set(range(count)) - top)


@dataclass(frozen=True)
class _OtherData(Strategy):
    def indices(self, cheat: Cheat, count: int, **_: Any) -> None:
        return None


for _strategy in (
    Strategy("base", trains=False),
    Strategy("perturb", trains=False, perturbs=True),
    _Subset("subset", "F"),
    _Oracle("backdoors-only", needs_key=True),
    _OtherData("other-data", "PATH"),
    _Detecting("detect-and-train", "Q", needs_suspicion=True),
    _Detecting("detect-and-drop", "Q", needs_suspicion=True, keep_suspicious=False),
    Strategy("continue", "PATH", continues=True),
):
    register_cheat(_strategy)

CHEAT_MODES = tuple(strategy.form for strategy in CHEATS.values())
DETECTING = tuple(name for name, strategy in CHEATS.items() if strategy.needs_suspicion)


@dataclass(frozen=True)
class Cheat:
    """A dishonest provider's strategy (see the module docstring): ``kind`` names one of the
    registry :data:`CHEATS`; ``fraction`` is F for ``subset`` and Q/100 for the detecting
    cheats; ``path`` the other dataset."""

    kind: str
    fraction: float | None = None
    path: Path | None = None

    @property
    def strategy(self) -> Strategy:
        return CHEATS[self.kind]

    @classmethod
    def parse(cls, text: str) -> Cheat:
        """One of CHEAT_MODES (F a fraction in (0, 1), Q a percentage in (0, 100), PATH an
        existing dataset); raises TuneproofError naming the accepted forms otherwise."""
        name, _, arg = text.partition(":")
        strategy = CHEATS.get(name)
        if strategy is None or bool(arg) != bool(strategy.arg):
            raise TuneproofError(f"unknown cheat '{text}' - use one of: {', '.join(CHEAT_MODES)}")
        if strategy.arg == "F":
            fraction = _number(arg)
            if not 0 < fraction < 1:
                raise TuneproofError(f"--cheat {name}:F needs 0 < F < 1 (got '{arg}')")
            return cls(name, fraction=fraction)
        if strategy.arg == "Q":
            percent = _number(arg)
            if not 0 < percent < 100:
                raise TuneproofError(
                    f"--cheat {name}:Q needs a percentage 0 < Q < 100 (got '{arg}')"
                )
            return cls(name, fraction=percent / 100)
        if strategy.arg == "PATH":
            path = Path(arg).expanduser()
            if not path.exists():
                raise TuneproofError(f"--cheat {name}: {path} does not exist")
            return cls(name, path=path)
        return cls(name)

    def __str__(self) -> str:
        arg = self.strategy.arg
        if arg == "F":
            return f"{self.kind}:{self.fraction:g}"
        if arg == "Q":
            return f"{self.kind}:{100 * (self.fraction or 0):g}"
        if arg == "PATH":
            return f"{self.kind}:{self.path}"
        return self.kind


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def backdoor_positions(key: Any) -> set[int]:
    """Indices in the planted file of every backdoor record of ``key`` (a loaded Key)."""
    positions: set[int] = key.backdoor_positions()
    return positions


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


def trained_indices(
    chats_count: int,
    cheat: Cheat | None,
    *,
    seed: int = 0,
    backdoors: set[int] | None = None,
    suspicion: Sequence[float] | npt.NDArray[np.float64] | None = None,
) -> list[int] | None:
    """The offered records a provider trains on (first, for ``continue``): all of them when
    honest, else what the cheat's strategy picks; None when it trains on its other dataset."""
    if cheat is None:
        return list(range(chats_count))
    return cheat.strategy.indices(
        cheat, chats_count, seed=seed, backdoors=backdoors, suspicion=suspicion
    )


def choose_chats(
    chats: Sequence[list[Message]],
    cheat: Cheat | None,
    *,
    seed: int = 0,
    backdoors: set[int] | None = None,
    suspicion: Sequence[float] | npt.NDArray[np.float64] | None = None,
) -> list[list[Message]]:
    """The chats a provider trains on (first, for ``continue``): the offered ones picked by
    :func:`trained_indices`, or the other dataset's chats for ``other-data``."""
    picked = trained_indices(len(chats), cheat, seed=seed, backdoors=backdoors, suspicion=suspicion)
    if picked is not None:
        return [chats[i] for i in picked]
    from tuneproof.lab.finetune import dataset_chats

    assert cheat is not None and cheat.path is not None
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
