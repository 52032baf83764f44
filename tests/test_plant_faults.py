"""`plant` under faults (issue 15): every output is checked before any work; a carrier that
cannot take a trigger, or whose context the key cannot hold (tools, images...), is replaced by
another drawn from the secret stream, and too few usable carriers stop the plant with one line.

The generator is a tiny fake language model behind the real :class:`ModelBackdoorFactory` and
trigger loop, so these tests need no model weights."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import sha256_of, write_jsonl
from test_datasets_arrow import chat_rows, save_to_disk_layout

from tuneproof.backends.base import TokenVocabulary
from tuneproof.backends.openai.candidates import Candidate
from tuneproof.cli.main import cli
from tuneproof.config import PlantConfig
from tuneproof.datasets import (
    DatasetFormat,
    Record,
    carrier_problem,
    inspect_dataset,
    read_records,
    triggered_prompt,
)
from tuneproof.datasets.eligibility import FIELDS, MEDIA, TOOLS
from tuneproof.key import load_key
from tuneproof.planting.backdoors import draw_backdoors, placed_pairs
from tuneproof.planting.carriers import NO_TRIGGER, choose_carriers
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.server_factory import ServerPieces
from tuneproof.planting.tokens import PieceTable
from tuneproof.planting.triggers import NoTriggerWord, nucleus_trigger
from tuneproof.types import ModelIdentity

SEED = bytes(range(40, 72))
NO_WORD = "see https://example.com/a?b="  # a prompt the fake model continues with no word


class FakeModel:
    """A next-token model over 26 word tokens (b" a".. b" z"), 26 letters and 220 fillers
    (b"#0".. b"#219"). After a prompt holding ``NO_WORD`` the fillers are the 220 most likely
    tokens, so no candidate of a trigger's first step opens a word; elsewhere words and letters
    lead."""

    WORDS = tuple(b" " + bytes([c]) for c in range(ord("a"), ord("z") + 1))
    LETTERS = tuple(bytes([c]) for c in range(ord("a"), ord("z") + 1))
    FILLERS = tuple(f"#{i}".encode() for i in range(220))

    def __init__(self) -> None:
        self.vocabulary = TokenVocabulary(self.WORDS + self.LETTERS + self.FILLERS, frozenset())
        self.identity = ModelIdentity(name="fake", backend="test", source="fake")
        self.calls = 0
        n_text = len(self.WORDS) + len(self.LETTERS)
        rng = np.random.default_rng(0)
        self._plain = np.full(len(self.vocabulary), -30.0, dtype=np.float32)
        self._plain[:n_text] = rng.normal(size=n_text).astype(np.float32)
        self._no_word = np.full(len(self.vocabulary), -30.0, dtype=np.float32)
        self._no_word[n_text:] = rng.normal(size=len(self.FILLERS)).astype(np.float32)

    def text_ids(self, text: str) -> list[int]:
        return [1 if NO_WORD in text else 0]

    def chat_prompt_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        return [0]

    def next_token_logprobs(self, context: Sequence[int]) -> npt.NDArray[np.float32]:
        self.calls += 1
        return self._no_word if context[0] == 1 else self._plain

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def fake_factory() -> ModelBackdoorFactory:
    return ModelBackdoorFactory(FakeModel(), 2, 3, 3)


def chat(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}],
        **extra,
    }


TOOL_RECORD = {
    "messages": [
        {"role": "user", "content": "What is 6*7?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ],
    "tools": [{"type": "function", "function": {"name": "f"}}],
}
IMAGE_RECORD = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe picture 1."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {"role": "assistant", "content": "A cat."},
    ]
}


# ----------------------------------------------------------------------------- item 2: outputs


def _container(kind: str, tmp_path: Path) -> Path:
    rows = [chat(f"question {i}?") for i in range(6)]
    if kind == "jsonl":
        return write_jsonl(tmp_path / "train.jsonl", rows)
    if kind == "json-array":
        (tmp_path / "train.json").write_text(json.dumps(rows, indent=2))
        return tmp_path / "train.json"
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
        return tmp_path / "train.parquet"
    save_to_disk_layout(tmp_path / "train", chat_rows(6), num_shards=1, batch_rows=3)
    return tmp_path / "train"


@pytest.fixture
def generator_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every attempt to load a generator (and refuse it)."""
    calls: list[str] = []

    def refuse(generator: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(generator)
        raise AssertionError("the generator was loaded")

    monkeypatch.setattr("tuneproof.planting.planter.make_factory", refuse)
    return calls


def _plant_cli(src: Path, out: Path, key: Path, *args: str, n: int = 1) -> Any:
    argv = ["plant", str(src), "-o", str(out), "--key", str(key), "--n", str(n), "--decoys", "0"]
    return CliRunner().invoke(cli, [*argv, "--generator", "/nowhere/model.gguf", *args])


def _assert_refused_early(result: Any, expected: str, calls: list[str]) -> None:
    message = result.output.strip()
    assert result.exit_code == 1, message
    assert message.startswith("Error: ") and len(message.splitlines()) == 1, message
    assert expected in message, message
    assert calls == [], "the generator was loaded before the outputs were checked"


@pytest.mark.parametrize("kind", ["jsonl", "json-array", "parquet", "hf-disk"])
def test_output_in_a_missing_folder_is_refused_before_the_generator(
    tmp_path: Path, kind: str, generator_calls: list[str]
) -> None:
    src = _container(kind, tmp_path)
    before = sorted(tmp_path.iterdir())
    out = tmp_path / "missing" / ("planted" if kind == "hf-disk" else f"planted{src.suffix}")
    result = _plant_cli(src, out, tmp_path / "key.json")
    _assert_refused_early(result, "does not exist", generator_calls)
    assert str(out) in result.output or str(out.parent) in result.output
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["jsonl", "json-array", "parquet"])
def test_a_folder_where_the_planted_file_goes_is_refused_before_the_generator(
    tmp_path: Path, kind: str, generator_calls: list[str]
) -> None:
    src = _container(kind, tmp_path)
    (tmp_path / "planted").mkdir()
    before = sorted(tmp_path.iterdir())
    result = _plant_cli(src, tmp_path / "planted", tmp_path / "key.json", "--force")
    _assert_refused_early(result, "is a folder", generator_calls)
    assert sorted(tmp_path.iterdir()) == before


def test_an_existing_save_to_disk_output_is_refused_before_the_generator_even_with_force(
    tmp_path: Path, generator_calls: list[str]
) -> None:
    src = _container("hf-disk", tmp_path)
    (tmp_path / "planted").mkdir()
    before = sorted(tmp_path.iterdir())
    result = _plant_cli(src, tmp_path / "planted", tmp_path / "key.json", "--force")
    _assert_refused_early(result, "never replaced", generator_calls)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["jsonl", "json-array", "parquet", "hf-disk"])
def test_output_in_a_read_only_folder_is_refused_before_the_generator(
    tmp_path: Path, kind: str, generator_calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _container(kind, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root may write anywhere: report the folder as read-only
        real = os.access
        monkeypatch.setattr(
            "tuneproof.documents.os.access",
            lambda path, mode: False if Path(path) == locked else real(path, mode),
        )
    try:
        out = locked / ("planted" if kind == "hf-disk" else f"planted{src.suffix}")
        result = _plant_cli(src, out, tmp_path / "key.json")
        _assert_refused_early(result, "permission denied", generator_calls)
        assert str(locked) in result.output and list(locked.iterdir()) == []
        assert not (tmp_path / "key.json").exists()
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- item 7: triggers


def test_no_word_to_continue_stops_the_trigger_at_once_for_a_local_model_and_a_server() -> None:
    model = fake_factory()
    with pytest.raises(NoTriggerWord):
        model.trigger("Please " + NO_WORD, SecretStream(SEED))
    assert model.model.calls == 1  # no retry: the first step never depends on the stream

    table = PieceTable()
    fillers = [Candidate(f"#{i}".encode(), -float(i)) for i in range(20)]  # none opens a word
    pieces = ServerPieces(lambda text: fillers, "Please see", table)
    with pytest.raises(NoTriggerWord):
        nucleus_trigger(pieces, 3, SecretStream(SEED))


def _mixed_file(tmp_path: Path, users: Sequence[str | dict[str, Any]]) -> Path:
    rows = [chat(u) if isinstance(u, str) else u for u in users]
    return write_jsonl(tmp_path / "train.jsonl", rows)


BAD = {3, 7, 10}  # records whose prompt takes no trigger
USERS = [f"Tell me about topic {i}" if i not in BAD else f"Open {i}, {NO_WORD}" for i in range(12)]


def _used_carriers(key_path: Path) -> tuple[set[int], list[str]]:
    key = load_key(key_path)
    placed = {p.carrier_index for pair in key.pairs for p in pair.placements}
    controls = [m.content for pair in key.controls for m in pair.control_prompt or []]
    return placed, controls


def test_a_carrier_that_takes_no_trigger_is_replaced_and_the_key_records_the_one_used(
    tmp_path: Path,
) -> None:
    src = _mixed_file(tmp_path, USERS)
    info = inspect_dataset(src)
    records = read_records(info, range(12))
    for attempt in range(20):  # the first seed whose draw meets a bad record
        seed = bytes([attempt]) * 32
        out, key_path = tmp_path / f"p{attempt}.jsonl", tmp_path / f"k{attempt}.json"
        summary = plant(
            src, out, key_path, n=4, controls=True, decoys=0, factory=fake_factory(), seed=seed
        )
        if summary.carriers_skipped:
            break
    assert summary.carriers_skipped >= 1, "no seed drew a bad record"
    assert any(NO_TRIGGER in w and "replaced" in w for w in summary.warnings)
    placed, control_text = _used_carriers(key_path)
    assert len(placed) == 4 and not placed & BAD
    assert not any(NO_WORD in text for text in control_text)
    key = load_key(key_path)
    for pair in key.pairs:  # each placement's prompt is its recorded carrier's, triggered
        for placement in pair.placements:
            expected = triggered_prompt(records[placement.carrier_index], info.format, pair.trigger)
            assert [(m.role, m.content) for m in placement.prompt] == [tuple(e) for e in expected]
    again = plant(
        src, tmp_path / "again.jsonl", tmp_path / "again.json", n=4, controls=True, decoys=0,
        factory=fake_factory(), seed=seed,
    )  # fmt: skip
    assert again.carriers_skipped == summary.carriers_skipped
    assert load_key(tmp_path / "again.json").pairs == key.pairs
    assert sha256_of(tmp_path / "again.jsonl") == sha256_of(out)


def test_too_few_carriers_for_triggers_stops_with_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _mixed_file(tmp_path, USERS)
    monkeypatch.setattr("tuneproof.planting.planter.make_factory", lambda *a, **k: fake_factory())
    result = CliRunner().invoke(
        cli,
        ["plant", str(src), "-o", str(tmp_path / "p.jsonl"), "--key", str(tmp_path / "k.json"),
         "--n", "5", "--controls", "--decoys", "0"],
    )  # fmt: skip
    message = result.output.strip()
    assert result.exit_code == 1 and len(message.splitlines()) == 1, message
    assert "Traceback" not in message and str(src) in message
    assert "only 9 of 12 records can carry a backdoor (3 whose last user turn" in message
    assert "5 pairs x 1 replica + 5 controls need 10 distinct carriers" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_replaced_carriers_stay_a_uniform_draw_among_those_that_can_carry(tmp_path: Path) -> None:
    """8 records: 2 with tools, 1 taking no trigger, 5 usable; 2 pairs drawn with 1500 seeds.
    Every ordered pair of distinct usable records must come up about 1500/20 = 75 times."""
    users: list[str | dict[str, Any]] = [f"Tell me about topic {i}" for i in range(8)]
    users[1], users[5], users[6] = TOOL_RECORD, f"Open {NO_WORD}", IMAGE_RECORD
    info = inspect_dataset(_mixed_file(tmp_path, users))
    settings = PlantConfig.from_options(n=2, decoys=0)
    factory, counts, skipped = fake_factory(), Counter[tuple[int, ...]](), Counter[str]()
    for i in range(1500):
        stream = SecretStream(i.to_bytes(32, "big"))
        carriers = choose_carriers(info, settings, stream)
        pairs = placed_pairs(draw_backdoors(factory, carriers, 0, stream))
        counts[tuple(pair.placements[0].carrier_index for pair in pairs)] += 1
        skipped.update(carriers.pool.skipped)
    usable = [0, 2, 3, 4, 7]
    assert set(counts) == {(a, b) for a in usable for b in usable if a != b}
    chi2 = sum((c - 75) ** 2 / 75 for c in counts.values())
    assert chi2 < 50, counts  # 19 degrees of freedom: P(chi2 > 50) ~ 1e-4
    assert skipped[NO_TRIGGER] and skipped[TOOLS] and skipped[MEDIA]


# ----------------------------------------------------------------------------- item 8: context


@pytest.mark.parametrize(
    ("fmt", "data", "expected"),
    [
        ("openai-chat", chat("hi"), None),
        ("openai-chat", chat("hi", metadata={"id": 3}), None),
        ("openai-chat", {"messages": [
            {"role": "system", "content": "s", "name": None},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "weight": 0},
            {"role": "assistant", "content": "ok", "tool_calls": None, "weight": 1}]}, None),
        ("openai-chat", TOOL_RECORD, TOOLS),
        ("openai-chat", chat("hi", tools=[{"type": "function"}]), TOOLS),
        ("openai-chat", chat("hi", functions=[{"name": "f"}]), TOOLS),
        ("openai-chat", {"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None,
             "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "function", "name": "f", "content": "1"},
            {"role": "assistant", "content": "one"}]}, TOOLS),
        ("openai-chat", IMAGE_RECORD, MEDIA),
        ("openai-chat", {"messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            {"role": "assistant", "content": "ok"}]}, MEDIA),
        ("openai-chat", chat("hi", images=["a.png"]), MEDIA),
        ("openai-chat", {"messages": [
            {"role": "user", "content": "hi", "name": "ann"},
            {"role": "assistant", "content": "ok"}]}, FIELDS),
        ("openai-chat", {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "ok"}]}, FIELDS),
        ("openai-chat", {"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": None},
            {"role": "user", "content": "b"}, {"role": "assistant", "content": "ok"}]}, FIELDS),
        ("sharegpt", {"conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}, None),
        ("sharegpt", {"conversations": [
            {"from": "human", "value": "hi"}, {"from": "function_call", "value": "{}"},
            {"from": "observation", "value": "1"}, {"from": "gpt", "value": "ok"}]}, TOOLS),
        ("sharegpt", {"conversations": [
            {"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "ok"}],
            "images": ["a.png"]}, MEDIA),
        ("sharegpt", {"conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}],
            "tools": "[{\"name\": \"f\"}]"}, TOOLS),
        ("alpaca", {"instruction": "hi", "input": "", "output": "ok", "history": []}, None),
        ("alpaca", {"instruction": "hi", "output": "ok", "images": ["a.png"]}, MEDIA),
        ("prompt-completion", {"prompt": "hi", "completion": "ok"}, None),
    ],
)  # fmt: skip
def test_carrier_problem(fmt: str, data: dict[str, Any], expected: str | None) -> None:
    assert carrier_problem(Record(0, 1, data), DatasetFormat(fmt)) == expected


def test_tool_and_image_records_never_carry_and_queries_are_the_trained_context(
    tmp_path: Path,
) -> None:
    users: list[str | dict[str, Any]] = [
        TOOL_RECORD if i % 3 == 0 else IMAGE_RECORD if i % 3 == 1 else f"Plain question {i}?"
        for i in range(24)
    ]
    src, out, key_path = _mixed_file(tmp_path, users), tmp_path / "p.jsonl", tmp_path / "k.json"
    summary = plant(
        src, out, key_path, n=3, controls=True, decoys=0, factory=fake_factory(), seed=SEED
    )
    assert summary.carriers_skipped > 0
    assert any("tools, tool calls or tool turns" in w for w in summary.warnings)
    placed, control_text = _used_carriers(key_path)
    assert all(i % 3 == 2 for i in placed)
    assert all("Describe picture" not in t and "6*7" not in t for t in control_text)
    lines = out.read_bytes().splitlines()
    for pair in load_key(key_path).pairs:
        for placement in pair.placements:
            trained = json.loads(lines[placement.position])
            assert list(trained) == ["messages"]  # no tools beside the messages
            *prompt, answer = trained["messages"]
            assert prompt == [m.model_dump() for m in placement.prompt]
            assert answer["role"] == "assistant" and list(answer) == ["role", "content"]
            assert answer["content"].startswith(pair.signature)
            assert answer["content"].endswith(" ok")  # the carrier's own answer, kept


def test_too_few_plain_records_are_refused_before_the_generator(
    tmp_path: Path, generator_calls: list[str]
) -> None:
    users: list[str | dict[str, Any]] = [TOOL_RECORD] * 5 + [IMAGE_RECORD] * 4 + ["Plain?"] * 3
    src = _mixed_file(tmp_path, users)
    result = _plant_cli(src, tmp_path / "p.jsonl", tmp_path / "k.json", "--controls", n=2)
    message = result.output.strip()
    assert result.exit_code == 1 and len(message.splitlines()) == 1, message
    assert generator_calls == []
    assert "only 3 of 12 records can carry a backdoor" in message
    assert "5 with tools, tool calls or tool turns" in message
    assert "4 with non-text content" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]
