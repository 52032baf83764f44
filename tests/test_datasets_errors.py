"""Bad input: one-line errors naming file:line and field, saying what to do; nothing written,
input unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tuneproof.datasets import inspect_dataset, make_backdoor, read_records, write_planted
from tuneproof.errors import DatasetError

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def lines(*records: Any) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def expect_error(path: Path, *needles: str) -> DatasetError:
    """inspect_dataset must fail with a one-line error holding every needle, input unchanged."""
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    with pytest.raises(DatasetError) as caught:
        inspect_dataset(path)
    text = str(caught.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    if before is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    return caught.value


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (
            lines(CHAT, b'{"messages": [{"role": "user" "content": "x"}]}'),
            [
                ":2: invalid JSON (Expecting ',' delimiter at column 31)",
                "fix the line or drop it; nothing was written",
            ],
        ),
        (
            lines(CHAT, CHAT, {"messages": [{"role": "user", "content": "only a question"}]}),
            [":3: field 'messages': no assistant turn after the last user turn", "add the answer"],
        ),
        (
            lines(CHAT, {"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}),
            [":2: field 'messages[1].content': missing"],
        ),
        (
            lines(CHAT, {"messages": [{"role": "bot", "content": "q"}]}),
            [
                ":2: field 'messages[0].role': unknown role 'bot'",
                "use system, user, assistant or tool",
            ],
        ),
        (
            lines(
                CHAT,
                {
                    "messages": [
                        {"role": "user", "content": 3},
                        {"role": "assistant", "content": "a"},
                    ]
                },
            ),
            [
                "field 'messages[0].content': must be a string or a list of content parts, "
                "found a number"
            ],
        ),
        (
            lines(
                CHAT,
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a", "weight": 2},
                    ]
                },
            ),
            ["field 'messages[1].weight': must be 0 or 1"],
        ),
        (lines(CHAT, {"id": 7}), [":2: field 'messages': missing", "needs a 'messages' list"]),
        (
            lines({"instruction": "q", "output": "a"}, {"instruction": "q"}),
            [":2: field 'output': missing", "Alpaca"],
        ),
        (
            lines({"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": None}),
            [":2: field 'completion': missing"],
        ),
        (
            lines({"conversations": [{"from": "human", "value": "q"}]}),
            [":1: field 'conversations': no gpt turn after the last human turn"],
        ),
        (
            lines(CHAT, CHAT, {"instruction": "q", "output": "a"}),
            [
                ":3: this record is Alpaca but the first record is OpenAI chat",
                "split it or convert",
            ],
        ),
        (
            lines({"id": 1, "body": "hello"}),
            [":1: cannot tell the dataset format", "pass --format"],
        ),
        (lines(CHAT, [1, 2]), [":2: a record must be a JSON object, found a list"]),
        (
            lines(CHAT) + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n',
            [":2: not valid UTF-8 (byte 0xe9 at column 47)", "re-encode"],
        ),
        (b"", ["the file is empty"]),
        (b"  \n\n \r\n", ["the file is empty"]),
        (b"\xef\xbb\xbf\n", ["the file is empty"]),
        (b"[]\n", ["the JSON array holds no records"]),
        (
            b"[\n" + json.dumps(CHAT).encode() + b",\n]\n",
            [":3: invalid JSON (a comma after the last record"],
        ),
        (
            b"[\n" + json.dumps(CHAT).encode() + b"\n" + json.dumps(CHAT).encode() + b"]\n",
            [":3: invalid JSON (expected ',' or ']' after a record at column 1)"],
        ),
        (
            b'[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": "a" "completion": "b"}\n]',
            [":3: invalid JSON (Expecting ',' delimiter at column 18)"],
        ),
        (
            b'[{"prompt": "a", "completion": "b"}] x',
            [":1: unexpected text after the end of the array (at column 38)"],
        ),
        (
            b'[{"prompt": "a", "completion": "b"},\n "text"]',
            [":2: a record must be a JSON object, found a string"],
        ),
        (
            b'[{"prompt": "a", "completion": "b"},\n {"prompt": "\xff"}]',
            [":2: not valid UTF-8 (byte 0xff)"],
        ),
    ],
)
def test_bad_input_is_reported_on_one_line_with_its_place(
    tmp_path: Path, content: bytes, needles: list[str]
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    error = expect_error(path, *needles)
    assert str(error).startswith(str(path))


def test_missing_path_and_foreign_folder(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.jsonl", "no such file or folder")
    expect_error(tmp_path, "not a Hugging Face save_to_disk dataset")


def test_a_bom_is_accepted_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines(CHAT, CHAT))
    info = inspect_dataset(path)
    assert info.has_bom and info.n_records == 2
    record = read_records(info, [0])[0]
    assert record.data == CHAT and record.line == 1
    new = make_backdoor(record, info.format, "t", "s")
    write_planted(info, tmp_path / "out.jsonl", {0: new})
    out = (tmp_path / "out.jsonl").read_bytes()
    assert out == b"\xef\xbb\xbf" + lines(new, CHAT)  # the BOM kept, not doubled


def _planted_setup(tmp_path: Path) -> tuple[Path, Any, dict[int, dict[str, Any]], str]:
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines(CHAT, CHAT, CHAT))
    info = inspect_dataset(path)
    new = make_backdoor(read_records(info, [2])[2], info.format, "t", "s")
    return path, info, {2: new}, hashlib.sha256(path.read_bytes()).hexdigest()


def _no_leftovers(folder: Path, *allowed: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(allowed)


def test_output_equal_to_input_is_refused_in_every_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, info, replacements, digest = _planted_setup(tmp_path)
    (tmp_path / "link.jsonl").symlink_to(path)
    os.link(path, tmp_path / "hard.jsonl")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for output in [
        path,
        Path("../train.jsonl"),
        tmp_path / "sub" / ".." / "train.jsonl",
        tmp_path / "link.jsonl",
        tmp_path / "hard.jsonl",
    ]:
        with pytest.raises(
            DatasetError,
            match="the output is the input - write the planted dataset to another path",
        ):
            write_planted(info, output, replacements)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    _no_leftovers(tmp_path, "train.jsonl", "link.jsonl", "hard.jsonl", "sub")


def test_a_changed_input_is_refused(tmp_path: Path) -> None:
    path, info, replacements, _ = _planted_setup(tmp_path)
    path.write_bytes(path.read_bytes() + lines(CHAT))
    with pytest.raises(DatasetError, match="changed since it was inspected"):
        write_planted(info, tmp_path / "out.jsonl", replacements)
    _no_leftovers(tmp_path, "train.jsonl")


def test_bad_replacements_are_programming_errors_and_write_nothing(tmp_path: Path) -> None:
    _, info, replacements, _ = _planted_setup(tmp_path)
    for outside in (3, -1):
        with pytest.raises(ValueError, match=r"outside 0\.\.2"):
            write_planted(info, tmp_path / "out.jsonl", {outside: replacements[2]})
    with pytest.raises(ValueError, match="not a valid OpenAI chat record: field 'messages'"):
        write_planted(info, tmp_path / "out.jsonl", {1: {"prompt": "x", "completion": "y"}})
    with pytest.raises(IndexError):
        read_records(info, [3])
    _no_leftovers(tmp_path, "train.jsonl")


def test_a_failure_during_the_write_leaves_no_output(tmp_path: Path) -> None:
    _, info, replacements, _ = _planted_setup(tmp_path)
    calls = []

    def progress(done: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_planted(info, tmp_path / "out.jsonl", replacements, progress=progress)
    assert calls
    _no_leftovers(tmp_path, "train.jsonl")


def test_progress_reports_bytes_up_to_the_file_size(tmp_path: Path) -> None:
    _, info, replacements, _ = _planted_setup(tmp_path)
    seen: list[int] = []
    write_planted(info, tmp_path / "out.jsonl", replacements, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == info.n_bytes


BIG_LINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tuneproof.datasets import inspect_dataset, make_backdoor, read_records, write_planted
    path, out = Path(sys.argv[1]), Path(sys.argv[2])
    info = inspect_dataset(path)
    records = read_records(info, [0, 1])
    new = make_backdoor(records[0], info.format, "t", "s")
    write_planted(info, out, {0: new})
    # VmHWM: this process's own peak (ru_maxrss would include the forking parent's RSS)
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    rss_kb = int(status.split()[0])
    print(json.dumps({"n": info.n_records, "rss_kb": rss_kb,
                      "size": len(records[1].data["messages"][0]["content"])}))
    """
)


def test_a_50_mb_line_is_accepted_without_blowing_up(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    huge = {
        "messages": [
            {"role": "user", "content": "word " * 10_000_000},
            {"role": "assistant", "content": "ok"},
        ]
    }
    path.write_bytes(lines(CHAT, huge))
    assert path.stat().st_size > 50_000_000
    done = subprocess.run(
        [sys.executable, "-c", BIG_LINE_SCRIPT, str(path), str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    assert report["n"] == 2 and report["size"] == 50_000_000
    assert report["rss_kb"] < 450_000  # measured ~270 MB: a few copies of the 50 MB line
    out = (tmp_path / "out.jsonl").read_bytes()
    assert out == lines(make_backdoor_like_first(), huge)  # the huge line copied as it is


def make_backdoor_like_first() -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Hi t"}, {"role": "assistant", "content": "s"}]
    }


def test_a_pretty_printed_object_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(CHAT, indent=2))
    expect_error(path, "one.json:1: invalid JSON", "one JSON object over several lines")


def test_the_output_must_be_a_file_in_an_existing_folder(tmp_path: Path) -> None:
    _, info, replacements, _ = _planted_setup(tmp_path)
    (tmp_path / "dir").mkdir()
    with pytest.raises(DatasetError, match="is a folder - give the path of the file to write"):
        write_planted(info, tmp_path / "dir", replacements)
    with pytest.raises(DatasetError, match="does not exist - create it first"):
        write_planted(info, tmp_path / "nope" / "out.jsonl", replacements)
    _no_leftovers(tmp_path, "train.jsonl", "dir")


def _compressed(tool: str, data: bytes, path: Path) -> bytes:
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    if tool == "gzip":
        return gzip.compress(data)
    if tool == "bzip2":
        return bz2.compress(data)
    if tool == "xz":
        return lzma.compress(data)
    if tool == "zstd":  # the frame magic: no zstd module is needed to be recognised
        return b"\x28\xb5\x2f\xfd" + data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(path.stem, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("tool", "name", "command"),
    [
        ("gzip", "train.jsonl.gz", "gzip -dc {path} > {folder}/train.jsonl"),
        ("gzip", "train.jsonl", "gzip -dc {path} > {folder}/train.decompressed.jsonl"),
        ("bzip2", "train.jsonl.bz2", "bzip2 -dc {path} > {folder}/train.jsonl"),
        ("xz", "train.json.xz", "xz -dc {path} > {folder}/train.json"),
        ("zstd", "train.jsonl.zst", "zstd -dc {path} > {folder}/train.jsonl"),
        ("zip", "train.zip", "unzip {path}"),
    ],
)
def test_a_compressed_file_is_told_to_be_decompressed_not_re_encoded(
    tmp_path: Path, tool: str, name: str, command: str
) -> None:
    path = tmp_path / name
    path.write_bytes(_compressed(tool, lines(CHAT, CHAT), path))
    error = expect_error(
        path,
        f"{path}: compressed with {tool}",
        f"decompress it first ({command.format(path=path, folder=tmp_path)})",
    )
    assert "iconv" not in str(error) and "UTF-8" not in str(error)


@pytest.mark.parametrize(
    ("record", "shape"),
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "a preference (DPO) record"),
        ({"chosen": [CHAT["messages"]], "rejected": [CHAT["messages"]]}, "(DPO)"),
        (
            {"input": CHAT, "preferred_output": [], "non_preferred_output": []},
            "an OpenAI preference (DPO) record",
        ),
        ({"prompt": "q", "completion": "a", "label": True}, "an unpaired preference (KTO)"),
        (
            {"prompt": CHAT["messages"][:1], "completion": CHAT["messages"][1:]},
            "a conversational prompt-completion record",
        ),
        ({"prompt": "q", "completions": ["a"], "labels": [True]}, "a stepwise supervision"),
        ({"text": "hello"}, "a plain-text (language modelling) record ('text')"),
    ],
)
def test_an_unsupported_shape_is_named_with_the_supported_ones(
    tmp_path: Path, record: dict[str, Any], shape: str
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines(record, record))
    error = expect_error(
        path,
        ":1: this looks like ",
        shape,
        "which tuneproof does not support yet",
        "supported: 'messages' (OpenAI chat), 'prompt'+'completion' strings",
        "(Alpaca) or 'conversations' (ShareGPT)",
    )
    assert "pass --format" not in str(error)


def test_a_prompt_completion_record_with_other_keys_is_still_accepted(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines({"prompt": "q", "completion": "a", "text": "x", "label": "pos"}))
    assert inspect_dataset(path).n_records == 1
