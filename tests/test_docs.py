"""The README and --help stay in step with the code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuneproof import config as planting
from tuneproof.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """Every `tuneproof ...` command line inside the README's bash code blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("tuneproof "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert first_block is not None
    lines = [ln.split("#")[0].strip() for ln in first_block.group(1).splitlines()]
    assert lines[:2] == ["make demo", "make test"]


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda a: " ".join(a[:2]))
def test_readme_commands_use_real_commands_and_options(argv: list[str]) -> None:
    path: list[str] = []
    for word in argv:
        if word.startswith("-"):
            break
        path.append(word)
    # the deepest real (sub)command named by the line
    result = None
    while path:
        result = CliRunner().invoke(cli, [*path, "--help"])
        if result.exit_code == 0:
            break
        path.pop()
    assert result is not None and result.exit_code == 0 and path, argv
    for word in argv:
        if word.startswith("--"):
            assert word.split("=")[0] in result.output, f"{word} not in `tuneproof {path}` help"


def test_help_states_the_real_defaults() -> None:
    text = CliRunner().invoke(cli, ["plant", "--help"]).output
    text = " ".join(text.split())
    for option, value in [
        ("--n", planting.DEFAULT_PAIRS),
        ("--replicas", planting.DEFAULT_REPLICAS),
        ("--k", planting.DEFAULT_K),
        ("--m", planting.DEFAULT_M),
        ("--trigger-tokens", planting.DEFAULT_TRIGGER_TOKENS),
        ("--decoys", planting.DEFAULT_DECOYS),
    ]:
        assert re.search(rf"{option} INTEGER [^[]{{0,120}}\[default: {value}\]", text), option
    assert f"default {planting.DEFAULT_PAIRS}" in README
    assert f"K={planting.DEFAULT_K}, m={planting.DEFAULT_M}" in README
