"""The commands' progress display: plain lines off a terminal, bounded, with stage timings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuneproof.cli.main import cli
from tuneproof.cli.progress import (
    MIB,
    STAGES,
    PlainProgressLines,
    stage_label,
    stage_times_line,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_long_stage_prints_a_bounded_number_of_lines_and_a_final_one() -> None:
    clock, lines = FakeClock(), list[str]()
    display = PlainProgressLines(lines.append, clock=clock, interval=5.0)
    updates = 10_000
    for done in range(updates + 1):
        clock.now = 1000.0 + 60.0 * done / updates
        display("signatures", done, updates)
    assert 1 < len(lines) <= 60 / 5.0 + 2
    assert lines[-1].startswith("drawing signatures: 10,000/10,000 pairs")
    assert "done in 1 min 00 s" in lines[-1]
    assert re.search(r"\d+/10,000 pairs, [\d,.]+ pairs/s, ETA \d", lines[0])
    assert display.stage_seconds() == {"signatures": pytest.approx(60.0)}


def test_bytes_stages_show_mib_rate_and_eta() -> None:
    clock, lines = FakeClock(), list[str]()
    display = PlainProgressLines(lines.append, clock=clock, interval=5.0)
    display("validate", 0, 1024 * MIB)
    clock.now += 5.0
    display("validate", 512 * MIB, 1024 * MIB)
    assert lines == ["validating the dataset: 512.0/1,024.0 MiB (50%) 102 MiB/s, ETA 5.0 s"]


def test_a_stage_finishes_once_and_quiet_updates_print_nothing() -> None:
    clock, lines = FakeClock(), list[str]()
    display = PlainProgressLines(lines.append, clock=clock, interval=5.0)
    for done in range(5):
        clock.now += 0.1
        display("queries", done, 4)
    display("queries", 4, 4)
    assert lines == [lines[0]] and lines[0].startswith("querying the model: 4/4 queries")


def test_training_steps_show_the_loss() -> None:
    clock, lines = FakeClock(), list[str]()
    display = PlainProgressLines(lines.append, clock=clock, interval=5.0)
    on_step = display.training()
    on_step(1, 3, 2.5)
    clock.now += 6.0
    on_step(2, 3, 1.25)
    clock.now += 1.0
    on_step(3, 3, 0.5)
    assert "loss 1.250" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("training: 3/3 steps") and "loss 0.500" in lines[-1]


def test_every_stage_has_a_label_and_prefixed_stages_keep_their_name() -> None:
    for stage in (
        "validate",
        "triggers",
        "signatures",
        "candidates",
        "write",
        "queries",
        "scoring",
    ):
        assert stage in STAGES
    assert stage_label("training honest") == ("training honest", "steps")
    assert stage_label("something new") == ("something new", "")
    assert stage_times_line({"validate": 1.23, "write": 0.04}, 35.44) == (
        "stages: validate 1.2 s, write 0.0 s; total 35.4 s"
    )


@pytest.mark.model
def test_cli_plant_in_a_log_shows_progress_lines_and_stage_times(
    tmp_path: Path, small_chat_file: Path, embedded_model: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tuneproof.backends.hf.load_hf_generator", lambda spec: embedded_model)
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    argv = ["plant", str(small_chat_file), "-o", str(out), "--key", str(key_path), "--n", "1"]
    argv += ["--replicas", "2", "--k", "4", "--m", "8", "--trigger-tokens", "6"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert "drawing signatures: 1/1 pairs, done in" in result.stderr
    assert re.search(r"^writing the planted file: [\d.]+/[\d.]+ KiB \(100%\)", result.stderr, re.M)
    assert "stages:" not in result.stderr
    stdout = result.stdout
    assert "60, 2 of them now carry backdoors" in stdout
    assert "MiB" not in stdout and "pairs/s" not in stdout
    assert re.search(
        r"^stages: .*signatures [\d.]+ s, answers [\d.]+ s, write [\d.]+ s; total [\d.]+ s$",
        stdout,
        re.M,
    )
    assert stdout.rstrip().splitlines()[-1].startswith("Upload ")
