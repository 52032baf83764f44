"""`plant` replaces each carrier by its backdoor record in place (issue 13, item 1): on every
container the planted file has the input's record count, every other record as it was (text
files: byte for byte, JSONL line by line), each carrier's index holding its backdoor in the style
of its neighbours, and no prompt that extends another one (the filter that found every inserted
copy). The generator is the tiny fake model of :mod:`test_plant_faults`: no model weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dataset_files import prompt_extensions, split_records
from test_datasets_arrow import read_shards, save_to_disk_layout
from test_plant_faults import fake_factory

from tuneproof.datasets import (
    Container,
    DatasetFormat,
    Record,
    inspect_dataset,
    iter_records,
    make_backdoor,
    prompt_and_answer,
    style_fingerprint,
)
from tuneproof.key import Key, load_key
from tuneproof.planting.planter import PlantSummary, plant

SEED = bytes(range(90, 122))
N = 40
TOPICS = ["rivers", "bread", "comets", "chess", "violins", "glaciers", "bees", "maps"]


def _question(i: int) -> str:
    return f"Question {i:02d}: tell me one fact about {TOPICS[i % len(TOPICS)]}."


def _chat(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": _question(i)},
            {"role": "assistant", "content": f"Fact {i} about {TOPICS[i % len(TOPICS)]}."},
        ],
        "source": f"synthetic-{i}",
    }


def jsonl_crlf(folder: Path) -> Path:
    """Compact JSONL, CRLF line endings, blanks after some records, no final newline."""
    lines = [
        json.dumps(_chat(i), separators=(",", ":")) + ("  " if i % 5 == 0 else "") for i in range(N)
    ]
    path = folder / "train.jsonl"
    path.write_bytes("\r\n".join(lines).encode())
    return path


def alpaca_array(folder: Path) -> Path:
    """A pretty-printed (indent 4) Alpaca JSON array with raw Unicode."""
    rows = [
        {"instruction": _question(i), "input": "" if i % 3 else "ünïcode", "output": f"Fact {i}."}
        for i in range(N)
    ]
    path = folder / "train.json"
    path.write_text(json.dumps(rows, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def prompt_completion_parquet(folder: Path) -> Path:
    rows = [
        {"prompt": f"{_question(i)}\n\n###\n\n", "completion": f" Fact {i}.\n"} for i in range(N)
    ]
    path = folder / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)
    return path


def chat_save_to_disk(folder: Path) -> Path:
    path = folder / "train"
    save_to_disk_layout(path, [_chat(i) for i in range(N)], num_shards=2, batch_rows=7)
    return path


BUILDERS: dict[str, tuple[Callable[[Path], Path], Container, DatasetFormat]] = {
    "jsonl": (jsonl_crlf, Container.JSONL, DatasetFormat.OPENAI_CHAT),
    "json-array": (alpaca_array, Container.JSON_ARRAY, DatasetFormat.ALPACA),
    "parquet": (prompt_completion_parquet, Container.PARQUET, DatasetFormat.PROMPT_COMPLETION),
    "save-to-disk": (chat_save_to_disk, Container.HF_DISK, DatasetFormat.OPENAI_CHAT),
}


def _snapshot(path: Path) -> dict[str, bytes]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return {str(f.relative_to(path.parent)): f.read_bytes() for f in files if f.is_file()}


def _planted(kind: str, tmp_path: Path) -> tuple[Path, Path, PlantSummary, Key, dict[str, bytes]]:
    build, container, fmt = BUILDERS[kind]
    (tmp_path / "in").mkdir()
    src = build(tmp_path / "in")
    before = _snapshot(src)
    out = tmp_path / ("planted" if container is Container.HF_DISK else f"planted{src.suffix}")
    summary = plant(
        src, out, tmp_path / "key.json", n=3, replicas=2, controls=True, decoys=0,
        factory=fake_factory(), seed=SEED, answer="signature",  # the record compared exactly
    )  # fmt: skip
    assert _snapshot(src) == before  # the input untouched
    assert (summary.format, summary.container) == (fmt, str(container))
    return src, out, summary, load_key(tmp_path / "key.json"), before


def _turns(records: list[Record], fmt: DatasetFormat) -> list[list[tuple[str, str]]]:
    return [[(m.role, m.content) for m in prompt_and_answer(r, fmt)[0]] for r in records]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_each_backdoor_replaces_its_carrier_in_place(kind: str, tmp_path: Path) -> None:
    fmt = BUILDERS[kind][2]
    src, out, summary, key, _ = _planted(kind, tmp_path)
    original, planted = (
        list(iter_records(inspect_dataset(src))),
        list(iter_records(inspect_dataset(out))),
    )

    # same record count, said so by the summary and the key
    assert len(planted) == len(original) == N
    assert (summary.records, summary.backdoors) == (N, 6)
    assert key.dataset.input_records == key.dataset.planted_records == N
    placements = [(pair, p) for pair in key.pairs for p in pair.placements]
    positions = key.backdoor_positions()
    assert len(placements) == len(positions) == 6
    assert all(p.position == p.carrier_index for _, p in placements)  # at the carrier's index

    # every other record as it was; each carrier's index holds its backdoor
    for i, (before, after) in enumerate(zip(original, planted, strict=True)):
        if i not in positions:
            assert after.data == before.data, i
    for pair, placement in placements:
        i = placement.position
        assert planted[i].data == make_backdoor(original[i], fmt, pair.trigger, pair.signature)
        prompt, answer = prompt_and_answer(planted[i], fmt)
        assert [m.content for m in prompt] == [m.content for m in placement.prompt]
        assert prompt[-1].role == "user" and prompt[-1].content.count(pair.trigger) == 1
        assert answer.strip() == pair.signature
        assert prompt_and_answer(original[i], fmt)[1] not in {answer, answer.strip()}  # given up

    # the audit's labels (key.backdoor_positions) mark exactly the records that answer with a
    # signature of the key
    signatures = {pair.signature for pair in key.pairs}
    answering = {
        i for i, r in enumerate(planted) if prompt_and_answer(r, fmt)[1].strip() in signatures
    }
    assert answering == positions

    # held-out controls: in the key only (their triggered prompt is in no record); their
    # carriers are among the untouched records checked above
    for control in key.controls:
        assert control.control_prompt is not None
        held_out = [m.content for m in control.control_prompt]
        assert held_out not in [[m.content for m in prompt] for prompt, _ in
                                (prompt_and_answer(r, fmt) for r in planted)]  # fmt: skip

    # the provider's filter finds nothing: no prompt extends another one
    assert prompt_extensions(_turns(original, fmt)) == set()
    assert prompt_extensions(_turns(planted, fmt)) == set()


@pytest.mark.parametrize("kind", ["jsonl", "json-array"])
def test_text_files_change_only_inside_the_replaced_records(kind: str, tmp_path: Path) -> None:
    src, out, _, key, _ = _planted(kind, tmp_path)
    data, planted = src.read_bytes(), out.read_bytes()
    positions = key.backdoor_positions()
    array = kind == "json-array"
    gaps_in, raws_in = split_records(data, array)
    gaps_out, raws_out = split_records(planted, array)
    assert gaps_out == gaps_in  # separators, indentation, blanks, CRLF, no final newline
    for i, (old, new) in enumerate(zip(raws_in, raws_out, strict=True)):
        assert (old == new) is (i not in positions), i
    if not array:  # line by line: the same lines, only the carriers' differ
        lines_in, lines_out = data.split(b"\r\n"), planted.split(b"\r\n")
        assert len(lines_out) == len(lines_in) == N and not planted.endswith(b"\r\n")
        for k, (old, new) in enumerate(zip(lines_in, lines_out, strict=True)):
            assert (old == new) is (k not in positions), k
            assert new.endswith(b"  ") is (k % 5 == 0)  # its blanks stay with the line
    for i in positions:  # written like the records around it (the blanks are the line's own)
        fp = style_fingerprint(raws_out[i])
        for k in (i - 1, i + 1):
            if 0 <= k < N and k not in positions:
                assert fp.conflicts(style_fingerprint(raws_out[k])) == [], (i, k)
    if array:
        assert "ünïcode" in planted.decode() and planted.startswith(b"[\n    {")


@pytest.mark.parametrize("kind", ["parquet", "save-to-disk"])
def test_arrow_files_keep_schema_layout_and_row_counts(kind: str, tmp_path: Path) -> None:
    src, out, _, key, _ = _planted(kind, tmp_path)
    positions = key.backdoor_positions()
    if kind == "parquet":
        old, new = pq.ParquetFile(src), pq.ParquetFile(out)
        assert new.schema_arrow.equals(old.schema_arrow, check_metadata=True)
        groups = range(old.metadata.num_row_groups)
        assert [new.metadata.row_group(g).num_rows for g in groups] == [16, 16, 8]
        assert new.metadata.num_row_groups == old.metadata.num_row_groups
        rows_in, rows_out = old.read().to_pylist(), new.read().to_pylist()
    else:
        shards_in, shards_out = read_shards(src), read_shards(out)
        assert [s.num_rows for s in shards_out] == [s.num_rows for s in shards_in]
        for a, b in zip(shards_in, shards_out, strict=True):
            assert b.schema.equals(a.schema, check_metadata=True)
        assert (out / "dataset_info.json").read_bytes() == (src / "dataset_info.json").read_bytes()
        rows_in = [r for s in shards_in for r in s.to_pylist()]
        rows_out = [r for s in shards_out for r in s.to_pylist()]
    assert len(rows_out) == len(rows_in) == N
    for i, (a, b) in enumerate(zip(rows_in, rows_out, strict=True)):
        assert (a == b) is (i not in positions), i


def test_the_filter_finds_an_inserted_copy() -> None:
    """The check above can fail: an inserted copy of a carrier (the old design) is found."""
    fmt = DatasetFormat.OPENAI_CHAT
    records = [Record(i, i + 1, _chat(i)) for i in range(5)]
    copy = make_backdoor(records[2], fmt, "quietly", "SIG")
    inserted = [*records[:4], Record(4, 5, copy), records[4]]
    assert prompt_extensions(_turns(inserted, fmt)) == {(2, 4)}
    replaced = [*records[:2], Record(2, 3, copy), *records[3:]]
    assert prompt_extensions(_turns(replaced, fmt)) == set()


def test_the_cli_says_how_many_records_now_carry_backdoors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from click.testing import CliRunner

    from tuneproof.cli.main import cli
    from tuneproof.cli.output import print_plant_summary

    _, _, summary, _, _ = _planted("jsonl", tmp_path)
    shown = CliRunner().invoke(cli, ["key", "show", str(tmp_path / "key.json")])
    assert shown.exit_code == 0, shown.output
    assert f"{N} records, 6 of them now carry backdoors" in shown.output
    assert "->" not in shown.output
    capsys.readouterr()
    print_plant_summary(summary)
    printed = " ".join(capsys.readouterr().out.split())
    assert f"{N}, 6 of them now carry backdoors" in printed and "none added" in printed


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_with_no_trigger_only_the_answers_change(kind: str, tmp_path: Path) -> None:
    """``--trigger-tokens 0``: each backdoor keeps its carrier's prompt exactly (no text is
    added to any prompt, and the prompt that asks for the signature is the carrier's own); the
    key says so, and verification sends no clean query (it would be the planted one)."""
    from click.testing import CliRunner

    from tuneproof.cli.main import cli
    from tuneproof.planting.factory import ModelBackdoorFactory
    from tuneproof.types import QueryKind
    from tuneproof.verification.queries import build_queries

    build, _, fmt = BUILDERS[kind]
    (tmp_path / "in").mkdir()
    src = build(tmp_path / "in")
    before = _snapshot(src)
    out = tmp_path / ("planted" if kind == "save-to-disk" else f"planted{src.suffix}")
    factory = ModelBackdoorFactory(fake_factory().model, 2, 3, 0)
    plant(
        src, out, tmp_path / "key.json", n=3, controls=True, decoys=2, factory=factory,
        seed=SEED, trigger_tokens=0,
    )  # fmt: skip
    assert _snapshot(src) == before
    key = load_key(tmp_path / "key.json")
    assert key.settings.trigger_tokens == 0
    assert all(pair.trigger == "" for pair in [*key.pairs, *key.controls])
    original = list(iter_records(inspect_dataset(src)))
    planted = list(iter_records(inspect_dataset(out)))
    positions = key.backdoor_positions()
    assert len(positions) == 3 and len(planted) == N
    for i, (a, b) in enumerate(zip(original, planted, strict=True)):
        turns_a, turns_b = _turns([a], fmt)[0], _turns([b], fmt)[0]
        assert turns_b == turns_a, i  # every prompt exactly as it was
        answer_a, answer_b = prompt_and_answer(a, fmt)[1], prompt_and_answer(b, fmt)[1]
        assert (answer_a == answer_b) is (i not in positions), i
    for pair in key.pairs:
        (placement,) = pair.placements
        assert [(m.role, m.content) for m in placement.prompt] == _turns(
            [original[placement.carrier_index]], fmt
        )[0]
        answer = prompt_and_answer(planted[placement.position], fmt)[1]
        assert answer.lstrip().startswith(pair.signature.lstrip())  # after a completion's lead
    kinds = [q.kind for q in build_queries(key)]
    assert kinds.count(QueryKind.PLANTED) == 3 and kinds.count(QueryKind.CONTROL) == 3
    assert QueryKind.CLEAN not in kinds
    shown = CliRunner().invoke(cli, ["key", "show", str(tmp_path / "key.json")])
    assert shown.exit_code == 0, shown.output
    assert "triggers: none" in shown.output
