"""The learned (Kerckhoffs) detector on the embedded model and a real plant of sample records."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tuneproof.api import plant
from tuneproof.audit import read_audit_records
from tuneproof.audit.learned import LearnedSettings, learned_detector, run_seed
from tuneproof.audit.learned_features import signature_walk
from tuneproof.audit.registry import AuditInput
from tuneproof.audit.scoring import auroc
from tuneproof.config import DEFAULT_K, DEFAULT_M
from tuneproof.embedded import sample_records
from tuneproof.errors import TuneproofError
from tuneproof.key import load_key
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.tokens import TokenRules

RECORDS = 200
PAIRS = 8
"""Pairs of the real plant and of each self-plant: fewer than the default 20 keep the test fast;
the detector is the same."""
TRIGGER_TOKENS = 6
FINDABLE = {"support": DEFAULT_K, "answer": "signature", "trigger_tokens": TRIGGER_TOKENS}
"""The plant these tests give the detector: uniform top-K signatures as whole answers after
6-token triggers (the sampler, answers and triggers of tuneproof 0.1), which it must find.
How well it finds the default (natural) plant is measured by benchmarks/natural_plant.py, not
asserted here."""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, embedded_model: Any) -> tuple[Path, Path]:
    """A real plant (decoys 0: the planted text is distributed as with decoys, see the module
    docstring) of 200 sample records, and its key."""
    folder = tmp_path_factory.mktemp("learned")
    sample, out, key = folder / "sample.jsonl", folder / "planted.jsonl", folder / "key.json"
    with sample.open("wb") as handle:
        for record in itertools.islice(sample_records(), RECORDS):
            handle.write(orjson.dumps(record) + b"\n")
    factory = ModelBackdoorFactory(embedded_model, DEFAULT_K, DEFAULT_M, TRIGGER_TOKENS)
    seed = b"real".ljust(32, b"-")
    plant(sample, out, key, n=PAIRS, decoys=0, seed=seed, factory=factory, **FINDABLE)
    return out, key


def audit_input(path: Path, model: Any, seed: int, **options: Any) -> AuditInput:
    records, chats = read_audit_records(path)
    settings = {"runs": 2, "generator": model, "plant": {"n": PAIRS, **FINDABLE}, **options}
    return AuditInput(path, records, chats, model, seed=seed, options={"learned": settings})


@pytest.fixture(scope="module")
def scores(planted: tuple[Path, Path], embedded_model: Any) -> np.ndarray:
    return learned_detector(audit_input(planted[0], embedded_model, seed=7))


def test_one_finite_score_per_record_and_the_backdoors_found(
    planted: tuple[Path, Path], scores: np.ndarray
) -> None:
    records, _ = read_audit_records(planted[0])
    assert scores.shape == (len(records),)
    assert np.isfinite(scores).all()
    positions = load_key(planted[1]).backdoor_positions()
    labels = [i in positions for i in range(len(records))]
    # measured 1.0 on this plant; a random scorer's AUROC with 8 backdoors among 200
    # records has sd 0.104, so it passes 0.8 with probability about 0.002
    assert auroc(scores, labels) > 0.8


def _text_only(planted: Path, model: Any) -> np.ndarray:
    return learned_detector(audit_input(planted, model, seed=3, features="text", runs=1))


@pytest.fixture(scope="module")
def text_scores(planted: tuple[Path, Path], embedded_model: Any) -> np.ndarray:
    return _text_only(planted[0], embedded_model)


def test_text_features_alone_also_learn(
    planted: tuple[Path, Path], text_scores: np.ndarray
) -> None:
    positions = load_key(planted[1]).backdoor_positions()
    assert auroc(text_scores, [i in positions for i in range(len(text_scores))]) > 0.7


def test_reproducible_for_one_seed(
    planted: tuple[Path, Path], embedded_model: Any, text_scores: np.ndarray
) -> None:
    """The same seed, the same scores: the self-plants, folds and classifier all come from it
    (on the cheaper text-only detector; the model features are plain forward passes)."""
    assert np.array_equal(_text_only(planted[0], embedded_model), text_scores)
    assert run_seed(7, 0) != run_seed(8, 0) != run_seed(7, 1)


def test_the_walk_recognises_a_signature(planted: tuple[Path, Path], embedded_model: Any) -> None:
    key = load_key(planted[1])
    rules = TokenRules.for_vocabulary(embedded_model.vocabulary)
    pair = key.pairs[0]
    prompt = [(m.role, m.content) for m in pair.placements[0].prompt]
    walk = signature_walk(embedded_model, rules, prompt, pair.signature)
    assert walk[0] == DEFAULT_M and walk[2] == 1.0  # every step in the top k, used up exactly
    clean = signature_walk(embedded_model, rules, prompt, "I am not sure what you mean by that.")
    assert clean[2] == 0.0


def test_bad_options_are_named() -> None:
    with pytest.raises(TuneproofError, match="unknown option 'rounds'"):
        LearnedSettings.from_options({"rounds": 3})
    with pytest.raises(TuneproofError, match="features must be among"):
        LearnedSettings.from_options({"features": "model,words"})
    assert LearnedSettings.from_options({"features": "model,text"}).features == ("model", "text")
