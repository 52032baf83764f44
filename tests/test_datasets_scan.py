"""The JSONL validation pass on files larger than a block: the fast path, worker processes and
their fallback must index exactly what a line-by-line reading finds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tuneproof.datasets import DatasetFormat, inspect_dataset, iter_records, read_records
from tuneproof.datasets import jsonl_scan as js
from tuneproof.errors import DatasetError


def chat(i: int, weight: bool = False) -> dict[str, object]:
    answer: dict[str, object] = {"role": "assistant", "content": f"Answer number {i}. " * (i % 7)}
    if weight:
        answer["weight"] = 1
    return {"messages": [{"role": "user", "content": f"Question {i}?"}, answer]}


def write_file(
    path: Path, n: int, eol: str = "\n", final_newline: bool = True
) -> list[tuple[int, int]]:
    """Write n chat records with blank lines here and there; return (offset, line) per record."""
    out, expected, line = bytearray(), [], 1
    for i in range(n):
        if i % 97 == 5:
            out += (" " + eol).encode()  # a blank line
            line += 1
        expected.append((len(out), line))
        out += json.dumps(chat(i, weight=i % 13 == 0)).encode()
        if i < n - 1 or final_newline:
            out += eol.encode()
        line += 1
    path.write_bytes(bytes(out))
    return expected


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 1 KiB, so that a small file exercises the block-by-block fast path."""
    monkeypatch.setattr("tuneproof.datasets.line_blocks.BLOCK", 1024)


def force_workers(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(js, "worker_count", lambda size: n)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize(("eol", "final_newline"), [("\n", True), ("\r\n", False)])
def test_the_index_matches_a_line_by_line_reading(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_blocks: None,
    workers: int,
    eol: str,
    final_newline: bool,
) -> None:
    force_workers(monkeypatch, workers)
    path = tmp_path / "d.jsonl"
    expected = write_file(path, 1500, eol, final_newline)
    fast: list[bool] = []
    real_fast = js._Scanner._fast

    def spy(self: js._Scanner, lines: list[bytes]) -> bool:
        fast.append(real_fast(self, lines))
        return fast[-1]

    monkeypatch.setattr(js._Scanner, "_fast", spy)
    info = inspect_dataset(path)
    assert True in fast and False in fast  # plain blocks took the fast path, blank lines did not
    assert info.n_records == 1500 and info.final_newline == final_newline
    assert info.index.starts.tolist() == [offset for offset, _ in expected]
    assert info.index.lines.tolist() == [line for _, line in expected]
    assert info.index.records_end == path.stat().st_size
    assert info.index.eol == eol
    records = read_records(info, [0, 777, 1499])
    assert [r.data for r in records.values()] == [chat(0, True), chat(777), chat(1499)]
    assert [r.line for r in iter_records(info)] == [line for _, line in expected]


def test_workers_are_used_and_a_failed_worker_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    force_workers(monkeypatch, 3)
    path = tmp_path / "d.jsonl"
    write_file(path, 600)
    started: list[js._Worker] = []
    real_init = js._Worker.__init__

    def spy(self: js._Worker, *args: object) -> None:
        real_init(self, *args)  # type: ignore[arg-type]
        started.append(self)

    monkeypatch.setattr(js._Worker, "__init__", spy)
    good = inspect_dataset(path).index
    assert len(started) == 2 and all(w.proc is not None and w.proc.returncode == 0 for w in started)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # workers start, then fail
    assert np.array_equal(inspect_dataset(path).index.starts, good.starts)
    monkeypatch.setattr(subprocess, "Popen", _refuse)  # workers cannot start at all
    assert np.array_equal(inspect_dataset(path).index.lines, good.lines)


def _refuse(*args: object, **kwargs: object) -> None:
    raise OSError("no processes today")


@pytest.mark.parametrize("workers", [1, 3])
def test_the_first_bad_line_is_reported_whichever_part_it_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None, workers: int
) -> None:
    force_workers(monkeypatch, workers)
    path = tmp_path / "d.jsonl"
    expected = write_file(path, 900)
    data = bytearray(path.read_bytes())
    for k in (880, 620):  # two problems in the later parts: the earlier one must be named
        start = expected[k][0]
        data[start : start + 1] = b"["
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=rf"d.jsonl:{expected[620][1]}: invalid JSON"):
        inspect_dataset(path)


def test_a_late_record_of_another_format_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    force_workers(monkeypatch, 3)
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(chat(i)) for i in range(700)]
    lines[650] = json.dumps({"prompt": "p", "completion": "c"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DatasetError, match=r"d\.jsonl:651: this record is prompt/completion but the first"
    ):
        inspect_dataset(path)
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: field 'prompt': missing"):
        inspect_dataset(path, DatasetFormat.PROMPT_COMPLETION)


def test_leading_blank_part_goes_on_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_blocks: None
) -> None:
    force_workers(monkeypatch, 2)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n" * 5000 + json.dumps(chat(1)).encode() + b"\n")
    info = inspect_dataset(path)
    assert info.n_records == 1 and info.index.lines.tolist() == [5001]


def test_worker_count_is_one_per_cpu_for_large_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert js.worker_count(js.PARALLEL_MIN_BYTES) == js.MAX_WORKERS
    assert js.worker_count(js.PARALLEL_MIN_BYTES - 1) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert js.worker_count(10 * js.PARALLEL_MIN_BYTES) == 2
