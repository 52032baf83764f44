"""The command layer: help is instant (no heavy import), errors are one line with an exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tuneproof import __version__
from tuneproof.cli.main import cli

HEAVY = ("torch", "transformers", "peft", "scipy", "pyarrow")


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys\n"
        "from tuneproof.cli.main import cli\n"
        "try:\n"
        "    cli(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "plant" in out
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", ["plant", "inspect", "sample", "key", "demo", "finetune"])
def test_every_command_has_one_line_help(command: str) -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    line = next(ln for ln in result.output.splitlines() if ln.strip().startswith(command + " "))
    assert len(line.split(None, 1)[1]) > 10  # a real one-line description
    sub = CliRunner().invoke(cli, [command, "--help"])
    assert sub.exit_code == 0 and "Usage: " in sub.output


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_sample_command_writes_real_chatterbot_records(tmp_path: Path) -> None:
    out = tmp_path / "sample.jsonl"
    result = CliRunner().invoke(cli, ["sample", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    assert 1000 < len(lines) < 1300
    first = orjson.loads(lines[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    held = tmp_path / "heldout.jsonl"
    assert CliRunner().invoke(cli, ["sample", "-o", str(held), "--split", "heldout"]).exit_code == 0
    train_q = {orjson.loads(x)["messages"][1]["content"] for x in lines}
    held_lines = held.read_bytes().splitlines()
    assert 80 < len(held_lines) < 200
    pairs = {
        (orjson.loads(x)["messages"][1]["content"], orjson.loads(x)["messages"][2]["content"])
        for x in lines
    }
    for x in held_lines:
        record = orjson.loads(x)["messages"]
        assert (record[1]["content"], record[2]["content"]) not in pairs
    assert train_q  # the two splits partition the pairs, not the questions


def test_key_commands_report_errors_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["key", "commit", str(tmp_path / "nope.json")])
    assert result.exit_code == 1
    assert result.output.startswith("Error: key file") and "Traceback" not in result.output
