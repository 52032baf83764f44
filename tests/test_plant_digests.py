"""The SHA-256 digests that the validating and writing passes compute as they go (issue 14): the
key's input and planted hashes must be those of the files' bytes (as `sha256sum` gives them),
computed once, and never reused for a file that changed."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_plant_faults import chat, fake_factory

from tuneproof.datasets import digests, inspect_dataset, jsonl, read_records, write_planted
from tuneproof.datasets import jsonl_scan as js
from tuneproof.datasets.chat import make_backdoor
from tuneproof.errors import DatasetError
from tuneproof.key import load_key
from tuneproof.planting import facts
from tuneproof.planting.planter import plant


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny blocks, hash chunks and copy chunks, and three scan processes, so that a small file
    takes every path a large one takes."""
    monkeypatch.setattr("tuneproof.datasets.line_blocks.BLOCK", 1024)
    monkeypatch.setattr(js, "worker_count", lambda size: 3)
    monkeypatch.setattr(digests, "HASH_CHUNK", 4096)
    monkeypatch.setattr("tuneproof.datasets.textfile.COPY_CHUNK", 5000)


def records_file(tmp_path: Path, n: int = 2000, *, crlf: bool = False) -> Path:
    path = tmp_path / "train.jsonl"
    eol = "\r\n" if crlf else "\n"
    lines = [
        json.dumps(chat(f"Tell me about topic {i} " + "and more " * (i % 9))) for i in range(n)
    ]
    path.write_bytes((eol.join(lines) + ("" if crlf else eol)).encode())  # CRLF: no final newline
    return path


@pytest.mark.parametrize("crlf", [False, True])
def test_inspect_and_write_planted_remember_the_true_sha256(
    tmp_path: Path, small_pieces: None, crlf: bool
) -> None:
    src = records_file(tmp_path, crlf=crlf)
    info = inspect_dataset(src)
    assert digests.known_sha256(src) == sha256_file(src)
    last = info.n_records - 1  # with CRLF: the line without a line ending
    carriers = read_records(info, [0, 7, 999, last])
    replacements = {
        p: make_backdoor(record, info.format, "alpha beta", "gamma delta")
        for p, record in carriers.items()
    }
    out = tmp_path / "planted.jsonl"
    write_planted(info, out, replacements)
    assert digests.known_sha256(out) == sha256_file(out)
    planted = out.read_bytes().splitlines(keepends=True)
    original = src.read_bytes().splitlines(keepends=True)
    assert len(planted) == len(original)
    for k, (before, after) in enumerate(zip(original, planted, strict=True)):
        assert (before == after) is (k not in replacements)  # untouched lines byte for byte
        assert (b"gamma delta" in after) is (k in replacements)


def test_a_changed_file_is_not_given_its_old_digest(tmp_path: Path) -> None:
    src = records_file(tmp_path, 50)
    inspect_dataset(src)
    assert digests.known_sha256(src) == sha256_file(src)
    st = src.stat()
    data = bytearray(src.read_bytes())
    data[20:21] = b"T" if data[20:21] != b"T" else b"U"  # same size, then the old mtime back
    src.write_bytes(bytes(data))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    assert digests.known_sha256(src) is None  # the ctime gives the change away
    assert digests.known_sha256(tmp_path / "missing.jsonl") is None


def test_the_key_records_the_files_sha256_without_reading_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_pieces: None
) -> None:
    src = write_jsonl(
        tmp_path / "train.jsonl", [chat(f"Tell me about topic {i}") for i in range(300)]
    )
    before = sha256_file(src)

    def reread(path: object) -> str:
        raise AssertionError(f"{path} hashed a second time")

    monkeypatch.setattr(facts, "path_sha256", reread)
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    plant(src, out, key_path, n=3, controls=True, decoys=0, factory=fake_factory(), seed=b"\1" * 32)
    key = load_key(key_path)
    assert key.dataset.input_sha256 == before == sha256_file(src)
    assert key.dataset.planted_sha256 == sha256_file(out)


def test_a_failed_write_leaves_no_output_no_digest_and_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_pieces: None
) -> None:
    src = records_file(tmp_path, 500)
    info = inspect_dataset(src)
    carriers = read_records(info, [100, 300])
    replacements = {p: make_backdoor(r, info.format, "alpha", "omega") for p, r in carriers.items()}
    calls = []
    real_copy = jsonl.copy_range

    def failing_copy(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(jsonl, "copy_range", failing_copy)
    out = tmp_path / "planted.jsonl"
    with pytest.raises(DatasetError, match="cannot write"):
        write_planted(info, out, replacements)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]
    assert digests.known_sha256(out) is None
    assert not [t for t in threading.enumerate() if t.name == "sha256"]
