"""Shared fixtures: the real embedded model (loaded once per session) and sample data files."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import settings

from tuneproof.embedded import SampleSplit, sample_records

# CI runs the same examples every time (a failure found locally is kept in .hypothesis/)
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# session fixtures that train tiny backdoored models (tests/trained_models.py)
pytest_plugins = ["trained_models"]


@pytest.fixture(scope="session", autouse=True)
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One dequantised-model cache for the whole session, in its temporary folder: the suite
    never writes into the user's ~/.cache, and every load of the embedded model after the first
    (the CLI's own, in-process or in a subprocess) reads it in about a second."""
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNEPROOF_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def embedded_model() -> Any:
    """The embedded SmolLM2-135M-Instruct, dequantised to float32 (about 20 s to load)."""
    from tuneproof.backends.hf import load_hf_model

    return load_hf_model("embedded")


@pytest.fixture(scope="session")
def sample_train() -> list[dict[str, Any]]:
    """The sample dataset's training split as records."""
    return list(sample_records(SampleSplit.TRAIN))


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write ``records`` as compact JSONL (the sample's own style)."""
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


@pytest.fixture
def small_chat_file(tmp_path: Path, sample_train: list[dict[str, Any]]) -> Path:
    """60 real records of the sample dataset as OpenAI chat JSONL."""
    return write_jsonl(tmp_path / "train.jsonl", list(itertools.islice(sample_train, 60)))


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


from servers import llama_server, llama_server_alive  # noqa: E402, F401  (fixtures)
