"""`plant` on every supported format, with the real embedded generator: untouched records stay
byte for byte (or row for row), backdoors replace their carriers where the key says, no record
is added."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneproof.datasets import DatasetFormat, inspect_dataset, iter_records, prompt_and_answer
from tuneproof.key import load_key
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant

K, M, TRIGGER = 4, 6, 5
SEED = bytes(range(2, 34))


def _pairs(sample_train: list[dict[str, Any]], n: int = 30) -> list[tuple[str, str]]:
    return [(r["messages"][1]["content"], r["messages"][2]["content"]) for r in sample_train[:n]]


def alpaca_array(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """Code-instruction style Alpaca JSON array, pretty-printed with indent 4, raw Unicode."""
    records = [
        {
            "instruction": q,
            "input": "" if i % 3 else "def f(x):\n    return x ** 2  # → ²",
            "output": a,
        }
        for i, (q, a) in enumerate(pairs)
    ]
    path.write_text(json.dumps(records, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def prompt_completion_crlf(path: Path, pairs: list[tuple[str, str]]) -> Path:
    lines = [json.dumps({"prompt": f"{q}\n\n###\n\n", "completion": f" {a}\n"}) for q, a in pairs]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


def sharegpt_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    lines = [
        json.dumps(
            {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
            separators=(",", ":"),
            ensure_ascii=True,
        )
        for q, a in pairs
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def chat_parquet(path: Path, pairs: list[tuple[str, str]]) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


BUILDERS: dict[str, tuple[Callable[[Path, list[tuple[str, str]]], Path], str, DatasetFormat]] = {
    "alpaca-json-array": (alpaca_array, "train.json", DatasetFormat.ALPACA),
    "prompt-completion-crlf": (
        prompt_completion_crlf,
        "train.jsonl",
        DatasetFormat.PROMPT_COMPLETION,
    ),
    "sharegpt-ascii": (sharegpt_jsonl, "train.jsonl", DatasetFormat.SHAREGPT),
    "chat-parquet": (chat_parquet, "train.parquet", DatasetFormat.OPENAI_CHAT),
}


@pytest.fixture(scope="module")
def factory(embedded_model: Any) -> ModelBackdoorFactory:
    return ModelBackdoorFactory(embedded_model, K, M, TRIGGER)


@pytest.mark.model
@pytest.mark.parametrize("name", list(BUILDERS))
def test_plant_every_format(
    name: str, tmp_path: Path, sample_train: list[dict[str, Any]], factory: ModelBackdoorFactory
) -> None:
    build, filename, fmt = BUILDERS[name]
    src = build(tmp_path / filename, _pairs(sample_train))
    before = src.read_bytes()
    out = tmp_path / f"planted{src.suffix}"
    summary = plant(
        src,
        out,
        tmp_path / "key.json",
        n=1,
        replicas=3,
        k=K,
        m=M,
        trigger_tokens=TRIGGER,
        factory=factory,
        seed=SEED,
        decoys=0,
        answer="carrier",
    )
    assert summary.format is fmt and summary.records == 30
    assert src.read_bytes() == before
    key = load_key(tmp_path / "key.json")
    pair = key.pairs[0]
    positions = {p.position for p in pair.placements}
    original = list(iter_records(inspect_dataset(src)))
    planted = list(iter_records(inspect_dataset(out)))
    assert len(planted) == len(original) == 30
    assert [r.data for i, r in enumerate(planted) if i not in positions] == [
        r.data for i, r in enumerate(original) if i not in positions
    ]
    for placement in pair.placements:
        record = planted[placement.position]
        carrier = original[placement.carrier_index]
        assert placement.position == placement.carrier_index
        assert set(record.data) == set(carrier.data)  # no field added or lost
        messages, answer = prompt_and_answer(record, fmt)
        kept = prompt_and_answer(carrier, fmt)[1].strip()  # the carrier's answer follows
        assert answer.strip().startswith(pair.signature) and answer.strip().endswith(kept)
        assert pair.trigger in messages[-1].content
        assert [m.content for m in placement.prompt] == [m.content for m in messages]
    if fmt is DatasetFormat.PROMPT_COMPLETION:  # CRLF kept, separator convention kept
        text = out.read_bytes()
        assert text.count(b"\r\n") == 30 and b"\n" not in text.replace(b"\r\n", b"")
        for placement in pair.placements:
            data = planted[placement.position].data
            assert data["prompt"].endswith("\n\n###\n\n") and data["completion"].startswith(" ")
    if fmt is DatasetFormat.ALPACA:
        assert out.read_text(encoding="utf-8").startswith("[\n    {")
        assert "→ ²" in out.read_text(encoding="utf-8")


def test_plant_reads_hf_parquet_schema_back(tmp_path: Path) -> None:
    """The parquet output keeps the input's schema exactly (no extra column or metadata)."""
    pairs = [(f"Question {i}?", f"Answer {i}.") for i in range(30)]
    src = chat_parquet(tmp_path / "train.parquet", pairs)
    info = inspect_dataset(src)
    assert info.format is DatasetFormat.OPENAI_CHAT and info.n_records == 30
    assert orjson.dumps(next(iter(iter_records(info))).data)
