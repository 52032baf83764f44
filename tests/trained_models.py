"""Helpers that train tiny backdoored models for tests, and a session fixture serving one.

A tiny randomly initialised Llama with the SmolLM2 tokenizer reduced to the planted file's
tokens learns a 60 + 8 record planted file in about ten seconds on two CPU cores. Register the
fixture for every test module with ``pytest_plugins = ["trained_models"]`` in tests/conftest.py.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tuneproof.embedded import embedded_gguf_path, sample_records
from tuneproof.key import Key, load_key
from tuneproof.lab.finetune import (
    chat_training_examples,
    dataset_chats,
    render_chat,
    save_model_folder,
    train,
)
from tuneproof.lab.tiny_models import compact_tokenizer, tiny_llama
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant

TINY_LR = 3e-3
PLANT_SEED = bytes(range(32))
K, M, TRIGGER_TOKENS, REPLICAS = 4, 8, 6, 8


@functools.cache
def smollm2_tokenizer() -> Any:
    """The embedded model's tokenizer alone, read from its GGUF (about 6 s, once a session)."""
    from transformers import AutoTokenizer

    path = embedded_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def tiny_tokenizer_for(planted_jsonl: Path) -> Any:
    """The SmolLM2 tokenizer reduced to the tokens of the rendered chats of ``planted_jsonl``."""
    full = smollm2_tokenizer()
    return compact_tokenizer(full, [render_chat(full, c) for c in dataset_chats(planted_jsonl)])


def train_tiny_backdoored_model(
    planted_jsonl: Path,
    out_dir: Path,
    epochs: int = 40,
    seed: int = 0,
    *,
    lr: float = TINY_LR,
    timings: dict[str, float] | None = None,
) -> Path:
    """Fully fine-tune a tiny random Llama (2 layers, hidden 128) on every record of
    ``planted_jsonl`` with the answer-only loss; save it as a model folder at ``out_dir``.

    ``timings`` (when given) receives the wall time of the tokenizer build and of the training.
    """
    start = time.perf_counter()
    tokenizer = tiny_tokenizer_for(planted_jsonl)
    examples = chat_training_examples(tokenizer, dataset_chats(planted_jsonl))
    built = time.perf_counter()
    model = tiny_llama(tokenizer, seed=seed)
    model = train(model, tokenizer, examples, epochs=epochs, lr=lr, seed=seed, threads=1)
    trained = time.perf_counter()
    if timings is not None:
        timings.update(tokenizer=built - start, training=trained - built)
    return save_model_folder(model, tokenizer, out_dir)


def write_sample(path: Path, n: int = 60) -> Path:
    """The first ``n`` records of the sample's training split as OpenAI chat JSONL."""
    records = itertools.islice(sample_records(), n)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


@dataclass(frozen=True)
class TrainedBackdoor:
    """A planted file, its key, and a tiny model folder trained on the planted file."""

    clean: Path
    planted: Path
    key: Key
    folder: Path
    timings: dict[str, float]


@pytest.fixture(scope="session")
def trained_backdoor(
    tmp_path_factory: pytest.TempPathFactory, embedded_model: Any
) -> Iterator[TrainedBackdoor]:
    """60 sample records + one pair planted in 8 replicas (K=4, m=8) by the real embedded
    generator, and a tiny model trained on them for 40 epochs (about 15 s after the embedded
    model is loaded)."""
    root = tmp_path_factory.mktemp("trained_backdoor")
    timings: dict[str, float] = {}
    clean, planted, key_path, folder = plant_and_train(
        root, embedded_model, n=1, replicas=REPLICAS, k=K, m=M, trigger_tokens=TRIGGER_TOKENS,
        controls=False, seed=PLANT_SEED, timings=timings,
    )  # fmt: skip
    yield TrainedBackdoor(clean, planted, load_key(key_path), folder, timings)


def plant_and_train(
    root: Path,
    embedded_model: Any,
    *,
    n: int,
    replicas: int,
    k: int,
    m: int,
    trigger_tokens: int,
    controls: bool,
    seed: bytes,
    decoys: int = 0,
    timings: dict[str, float] | None = None,
) -> tuple[Path, Path, Path, Path]:
    """Write 60 sample records under ``root``, plant into them with the real embedded
    generator, train a tiny model on the planted file; return (clean, planted, key, model)."""
    clean = write_sample(root / "train.jsonl")
    planted, key_path = root / "planted.jsonl", root / "key.json"
    plant(
        clean,
        planted,
        key_path,
        n=n,
        replicas=replicas,
        k=k,
        m=m,
        trigger_tokens=trigger_tokens,
        controls=controls,
        decoys=decoys,
        seed=seed,
        factory=ModelBackdoorFactory(embedded_model, k, m, trigger_tokens),
    )
    folder = train_tiny_backdoored_model(planted, root / "model", timings=timings)
    return clean, planted, key_path, folder


PAIRS_SEED = bytes(range(5, 37))
PAIRS_K, PAIRS_M, PAIRS_TRIGGER = 8, 16, 6  # 48 bits per signature
PAIRS_DECOYS = 7  # the decoy rank test: each true signature among 8 candidates


@dataclass(frozen=True)
class TrainedPairs:
    """Two pairs x 5 replicas + 2 held-out controls planted in 60 sample records, and a tiny
    model trained on the planted file."""

    clean: Path
    planted: Path
    key_path: Path
    key: Key
    folder: Path


@pytest.fixture(scope="session")
def trained_pairs(tmp_path_factory: pytest.TempPathFactory, embedded_model: Any) -> TrainedPairs:
    """The plant (real embedded generator, K=8, m=16, 7 decoys per pair) and the tiny model
    trained on it, shared by every test module that verifies a model with the backdoors trained
    in."""
    root = tmp_path_factory.mktemp("trained_pairs")
    clean, planted, key_path, folder = plant_and_train(
        root, embedded_model, n=2, replicas=5, k=PAIRS_K, m=PAIRS_M,
        trigger_tokens=PAIRS_TRIGGER, controls=True, seed=PAIRS_SEED, decoys=PAIRS_DECOYS,
    )  # fmt: skip
    return TrainedPairs(clean, planted, key_path, load_key(key_path), folder)
