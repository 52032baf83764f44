"""The ``learned`` detector: what a provider who knows tuneproof but not the key can train.

Kerckhoffs' principle: the provider has the planted file and tuneproof's code and defaults, and
can run ``tuneproof plant`` itself. So it plants the planted file again, ``runs`` times, with
fresh keys of its own (seeded from ``AuditInput.seed``) and the default settings: each of these
self-plants gives it backdoors made exactly the way the real ones were, labelled by its own key
(its positions; the re-planted file's own records, so that a plant that inserts backdoors and one
that replaces carriers in place both work). It trains a classifier on its backdoors (label 1)
against the other records of its re-planted files (label 0) and scores every record of the real
planted file with it.

Two settings are changed from the defaults because they provably leave the planted text's
distribution unchanged (src/tuneproof/planting/backdoors.py, carriers.py, sampler.py):

* ``decoys=0``. With R decoys, a pair's R + 1 candidates are drawn from the independent streams
  'signature/<i>' for the same prompt (i.i.d. given the prompt) and the independent stream
  'decoy-choice' picks the planted one uniformly, independently of the candidates: the planted
  signature is distributed as one draw, which is what ``decoys=0`` plants (stream 'signature').
  The triggers, carriers and positions come from other streams and never read ``decoys``. About
  60 times cheaper at the default R = 63.
* ``controls=False``. Controls are drawn after the planted pairs (their carriers last in the
  carriers' order, their pair streams numbered after the planted ones; a control's carrier stays
  as it is) and kept only in the key; the only trace in the planted pairs is that an
  anchor replaced for want of a trigger word is the next usable record after the controls'
  carriers instead of after the pairs', still a uniform draw among the unused usable records.

The real backdoors are records of the planted file, hence label-0 records of every self-plant:
label noise the provider also has. To keep the classifier from learning them as clean, the real
file's records are cross-fitted: they are split into ``folds`` folds, and the records of a fold
are scored by a classifier whose label-0 records (and label-1 records, by their carrier) come
from the other folds only.

Features (``features``, chosen by measurement on held-out self-plant runs, docs/stealth.md):

* ``model``: what the generator itself exposes. The signature is drawn token by token uniformly
  from the top ``k`` prefix-free allowed tokens, so the answer is walked against the generator's
  prefix-free ranking (:func:`~tuneproof.planting.sampler.select_prefix_free` with the sampler's
  rules) as the answer to the record's prompt: how many of its first ``m`` steps fall in the top
  ``k``, whether it is used up exactly after ``m``, the ranks and log-probs of the walk. The
  trigger is a nucleus sample continuing the last user turn, so that turn's last tokens get their
  log-prob, rank and the probability mass ranked above them under the generator. The answer's
  head is also read as a sample of the generator (:func:`~tuneproof.audit.learned_features.
  answer_head_scores`: mean log-prob and entropy, Fast-DetectGPT's analytic curvature, the
  tokens outside the 0.95 nucleus), which is what a natural signature
  (``plant --sampler natural``) leaves. Plus lengths.
* ``text``: hashed character n-grams of the last user turn's tail and the answer's head.
* ``embed``: all-MiniLM-L6-v2 embeddings of the same tail and head (the relevance detector's
  model), and their cosine.

The model features are computed once per distinct record (a self-plant's label-0 records are the
real file's records), so their cost is that of the file plus ``runs`` x the pairs of a plant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from tuneproof.audit.learned_features import (
    FEATURE_SETS,
    Chat,
    Featurizer,
)
from tuneproof.audit.registry import AuditInput
from tuneproof.audit.scoring import FloatArray
from tuneproof.config import DEFAULT_GENERATOR, PlantConfig
from tuneproof.errors import TuneproofError


@dataclass(frozen=True)
class LearnedSettings:
    """The detector's settings (``options["learned"]``): self-plant ``runs``, the feature sets,
    the cross-fitting ``folds`` of the real file's records, the classifier's ``C``, and the
    generator the provider assumes (the default one; a spec or a loaded HFCausalLM). ``plant``
    passes extra options to the self-plants (e.g. ``{"n": 5}`` to make small tests faster;
    leave empty to model the default plant)."""

    runs: int = 4
    features: tuple[str, ...] = ("model", "text")
    folds: int = 5
    c: float = 1.0
    generator: Any = DEFAULT_GENERATOR
    plant: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> LearnedSettings:
        """Settings from a detector's options dict; a TuneproofError naming a bad one."""
        given = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TuneproofError(
                f"unknown option '{unknown[0]}' of the learned detector - "
                f"choose among: {', '.join(sorted(known))}"
            )
        if "features" in given:
            chosen = given["features"]
            chosen = tuple(chosen.split(",")) if isinstance(chosen, str) else tuple(chosen)
            bad = [f for f in chosen if f not in FEATURE_SETS]
            if bad or not chosen:
                raise TuneproofError(
                    f"learned detector features must be among {', '.join(FEATURE_SETS)}, "
                    f"got {','.join(chosen) or 'none'}"
                )
            given["features"] = chosen
        if "plant" in given:
            given["plant"] = tuple(sorted(dict(given["plant"]).items()))
        settings = cls(**given)
        if settings.runs < 1 or settings.folds < 1 or settings.c <= 0:
            raise TuneproofError("the learned detector needs runs >= 1, folds >= 1 and c > 0")
        return settings


@dataclass(frozen=True)
class SelfPlant:
    """One self-plant: its records as chats, which are its own backdoors, and the input (= real
    planted file) index of each backdoor's carrier."""

    chats: list[Chat]
    labels: list[bool]
    carriers: dict[int, int]
    """planted-file position -> carrier index in the input (for each backdoor)."""


def learned_detector(inp: AuditInput) -> FloatArray:
    """One suspicion score per record of ``inp.planted``: the probability, under a classifier
    trained on the provider's own self-plants of the file, that the record is a backdoor."""
    if inp.planted is None:
        raise TuneproofError("the learned detector needs the planted file to plant it again")
    if importlib.util.find_spec("sklearn") is None:
        raise TuneproofError(
            "the learned detector needs scikit-learn: pip install 'tuneproof[audit]' "
            "(or leave it out with --detectors)"
        )
    settings = LearnedSettings.from_options(inp.options.get("learned"))
    generator = _generator(inp, settings.generator)
    plants = self_plants(inp.planted, generator, settings, inp.seed, inp.step)
    real = [as_chat(chat) for chat in inp.chats]
    featurizer = Featurizer(generator, settings.features, inp.step)
    return cross_fitted_scores(real, plants, featurizer, settings, inp.seed)


def as_chat(chat: Sequence[Sequence[str]]) -> Chat:
    """A chat of ``AuditInput.chats`` as a hashable :data:`Chat`."""
    return tuple((str(role), str(content)) for role, content in chat)


def _generator(inp: AuditInput, spec: Any) -> Any:
    """The model the provider assumes drew the backdoors: a loaded model given as the setting;
    the audit's reference model as a generator when it is that same spec; else the spec loaded
    as a generator."""
    if not isinstance(spec, str):
        return spec
    from tuneproof.backends.hf import as_generator, load_hf_generator

    if spec == inp.reference_model:
        return as_generator(inp.model())
    return load_hf_generator(spec)


def run_seed(seed: int, run: int) -> bytes:
    """The 256-bit seed of self-plant ``run`` of an audit seeded with ``seed``."""
    return hashlib.sha256(f"tuneproof/audit/learned/{seed}/{run}".encode()).digest()


def self_plants(
    planted: Path,
    generator: Any,
    settings: LearnedSettings,
    seed: int,
    step: Callable[[str, int, int], None],
) -> list[SelfPlant]:
    """Plant ``planted`` again ``settings.runs`` times with the default settings (but
    ``decoys=0`` and no controls, see the module docstring) and fresh seeds; read each
    re-planted file and its backdoor positions from its key."""
    from tuneproof.api import plant
    from tuneproof.audit import read_audit_records
    from tuneproof.key import load_key
    from tuneproof.planting.factory import ModelBackdoorFactory

    options: dict[str, Any] = {"decoys": 0, "controls": False, **dict(settings.plant)}
    config = PlantConfig(**options)
    factory = ModelBackdoorFactory.from_config(generator, config)
    out: list[SelfPlant] = []
    with tempfile.TemporaryDirectory(prefix="tuneproof-learned-") as tmp:
        for run in range(settings.runs):
            step("learned: self-plants", run, settings.runs)
            folder = Path(tmp) / f"run{run}"
            folder.mkdir()
            output, key_path = folder / planted.name, folder / "key.json"
            plant(
                planted, output, key_path, config=config, seed=run_seed(seed, run), force=True,
                factory=factory,
            )  # fmt: skip
            key = load_key(key_path)
            _, chats = read_audit_records(output)
            positions = key.backdoor_positions()
            carriers = {p.position: p.carrier_index for pair in key.pairs for p in pair.placements}
            out.append(
                SelfPlant(
                    [as_chat(c) for c in chats],
                    [i in positions for i in range(len(chats))],
                    carriers,
                )
            )
    step("learned: self-plants", settings.runs, settings.runs)
    return out


def cross_fitted_scores(
    real: list[Chat],
    plants: list[SelfPlant],
    featurizer: Featurizer,
    settings: LearnedSettings,
    seed: int,
) -> FloatArray:
    """Score the real file's records ``real``: each fold of them by a classifier trained on the
    self-plants' records, minus that fold's (as label-0 records and as carriers)."""
    positives: list[tuple[Chat, int]] = []  # (chat, carrier index in the real file)
    negatives: dict[Chat, None] = {}
    for run in plants:
        for i, (chat, label) in enumerate(zip(run.chats, run.labels, strict=True)):
            if label:
                positives.append((chat, run.carriers.get(i, -1)))
            else:
                negatives.setdefault(chat)
    if not positives:
        raise TuneproofError("the self-plants of the learned detector planted no backdoor")
    folds = min(settings.folds, len(real))
    rng = np.random.default_rng([seed, 0x1EA2])
    fold_of = rng.permutation(len(real)) % max(folds, 1)
    first_index: dict[Chat, int] = {}
    for i, chat in enumerate(real):
        first_index.setdefault(chat, i)

    def fold(chat: Chat | None, index: int = -1) -> int:
        if chat is not None:
            index = first_index.get(chat, -1)
        return int(fold_of[index]) if 0 <= index < len(real) else -1

    train = [c for c, _ in positives] + list(negatives)
    train_folds = np.array(
        [fold(None, carrier) for _, carrier in positives] + [fold(c) for c in negatives]
    )
    labels = np.array([True] * len(positives) + [False] * len(negatives))
    unique = list(dict.fromkeys([*train, *real]))
    matrix = featurizer.features(unique)
    row = {chat: i for i, chat in enumerate(unique)}
    x_train = matrix[[row[c] for c in train]]
    x_real = matrix[[row[c] for c in real]]
    scores = np.zeros(len(real))
    for f in range(folds) if folds > 1 else [-2]:
        keep = train_folds != f
        model = _classifier(settings.c).fit(x_train[keep], labels[keep])
        target = fold_of == f if folds > 1 else np.ones(len(real), bool)
        scores[target] = model.predict_proba(x_real[target])[:, 1]
    return scores


def _classifier(c: float) -> Any:
    """Class-balanced L2 logistic regression (deterministic: lbfgs)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
