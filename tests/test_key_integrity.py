"""A tampered key never goes unnoticed (issue 15, item 4): a key edited or damaged after plant
wrote it is refused at load; `verify --commitment HASH` refuses, before any query, a key whose
commitment is not the published one; every report shows the commitment and whether it was
checked; a key file other users can read draws a warning."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import write_jsonl
from rich.console import Console
from servers import FakeServer, Request, running_fake_server
from test_soundness import _plant

from tuneproof.api import verify as api_verify
from tuneproof.cli.main import cli
from tuneproof.errors import KeyFileError, TuneproofError
from tuneproof.key import Key, load_key
from tuneproof.report.files import load_report, report_to_html
from tuneproof.report.terminal import print_summary


@pytest.fixture(scope="module")
def plant_dir(tmp_path_factory: pytest.TempPathFactory, sample_train: list[Any]) -> Path:
    """4 planted pairs and 4 controls, 63 decoys each, in 40 sample records."""
    folder = tmp_path_factory.mktemp("key-integrity")
    _plant(folder, write_jsonl(folder / "train.jsonl", sample_train[:40]), n=4)
    return folder


@pytest.fixture(scope="module")
def planted(plant_dir: Path) -> Key:
    return load_key(plant_dir / "key.json")


@pytest.fixture
def key_file(plant_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the key file plant wrote (mode 0600), for a test to edit."""
    path = tmp_path / "key.json"
    shutil.copyfile(plant_dir / "key.json", path)
    path.chmod(0o600)
    return path


def _secrets(key: Key) -> list[str]:
    pairs = [*key.pairs, *key.controls]
    return [key.seed, *(p.trigger for p in pairs), *(p.signature for p in pairs)]


def trained_server(key: Key) -> AbstractContextManager[FakeServer]:
    """A server whose model learnt the backdoors: it answers each planted prompt with its
    signature, anything else with a plain sentence; it gives no log-probs."""
    answers = {
        pair_placement.prompt[-1].content: pair.signature
        for pair in key.pairs
        for pair_placement in pair.placements
    }

    def script(request: Request) -> tuple[int, Any]:
        if not request.path.endswith("/chat/completions"):
            return 404, {"error": {"message": "not here"}}
        text = answers.get(request.body["messages"][-1]["content"], "I am not sure.")
        return 200, {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        }

    return running_fake_server(script)


def failing_server() -> AbstractContextManager[FakeServer]:
    """A server that fails every request (and counts them)."""
    return running_fake_server(lambda request: (500, {"error": {"message": "down"}}))


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"OPENAI_API_KEY": "x"})


def verify_cli(key: Path, server: FakeServer, *extra: str) -> Result:
    return run("verify", "--key", str(key), "--model", "m", "--base-url", server.base_url, *extra)


def one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- --commitment


def test_the_published_commitment_verifies_normally_and_every_report_shows_it(
    planted: Key, key_file: Path, tmp_path: Path
) -> None:
    commitment = planted.commitment()
    json_out, html_out = tmp_path / "r.json", tmp_path / "r.html"
    with trained_server(planted) as server:
        checked = verify_cli(
            key_file,
            server,
            "--commitment",
            commitment.upper(),  # the form a user may paste is accepted
            "--json",
            str(json_out),
            "--html",
            str(html_out),
        )
        unchecked = verify_cli(key_file, server)
    assert checked.exit_code == 0, checked.output
    assert f"key commitment: {commitment} - matches the published value" in checked.stdout
    report = json.loads(json_out.read_text())
    assert report["verdict"] == "verified" and report["key_commitment"] == commitment
    assert report["commitment_checked"] is True and report["key_integrity"] is True
    html = html_out.read_text()
    assert f"{commitment} - matches the published value" in html
    assert "passed when the key was loaded" in html

    assert unchecked.exit_code == 0, unchecked.output
    assert (
        f"key commitment: {commitment} - not checked against a published value (pass"
        " --commitment)" in unchecked.stdout
    )
    assert "warning" not in unchecked.output  # mode 0600: no warning

    # a report written before these fields existed still loads, and says what it knows
    del report["commitment_checked"], report["key_integrity"]
    json_out.write_text(json.dumps(report))
    old = load_report(json_out)
    assert old.commitment_checked is False and old.key_integrity is None
    console = Console(file=io.StringIO(), width=200)
    print_summary(old, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"key commitment: {commitment} - not checked against a published value" in text
    assert "integrity" not in text
    assert f"{commitment} - not checked against a published value" in report_to_html(old)


def test_a_wrong_commitment_exits_2_before_any_query(planted: Key, key_file: Path) -> None:
    wrong = "0123456789ab" + planted.commitment()[12:]
    with failing_server() as server:
        result = verify_cli(key_file, server, "--commitment", wrong)
        assert server.requests == []
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in lines[0]
    assert planted.commitment()[:12] in lines[0] and "0123456789ab" in lines[0]
    assert "does not match the published commitment" in lines[0] and "dispute" in lines[0]
    assert str(key_file) in lines[0]


def test_the_library_refuses_a_wrong_commitment_before_any_query(
    planted: Key, key_file: Path
) -> None:
    with failing_server() as server:
        for key in (key_file, planted):
            with pytest.raises(KeyFileError, match="does not match the published commitment"):
                api_verify(key, "m", base_url=server.base_url, commitment="f" * 64)
        with pytest.raises(TuneproofError, match="64 hex digits"):
            api_verify(key_file, "m", base_url=server.base_url, commitment="abc")
        assert server.requests == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("3f2a", "is 4 characters long"),
        ("a" * 63, "is 63 characters long"),
        ("g" * 64, "holds characters other than 0-9 and a-f"),
        ("", "is 0 characters long"),
    ],
    ids=["short", "63-digits", "not-hex", "empty"],
)
def test_a_malformed_commitment_exits_2_with_a_clear_error(
    key_file: Path, value: str, why: str
) -> None:
    with failing_server() as server:
        result = verify_cli(key_file, server, "--commitment", value)
        assert server.requests == []
    assert result.exit_code == 2
    assert result.output.startswith("Error: --commitment must be the 64 hex digits")
    assert why in result.output and len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- edited keys


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _other_hex(value: str) -> str:
    return ("1" if value[0] != "1" else "2") + value[1:]


EDITS = {
    # same length in UTF-8 bytes, so that the edit passes the schema's checks
    "signature": lambda d: d["pairs"][0].update(signature=d["pairs"][0]["signature"][::-1]),
    "trigger": lambda d: d["pairs"][1].update(trigger="Tell me everything."),
    "placement prompt": lambda d: d["pairs"][0]["placements"][0]["prompt"][-1].update(
        content="Another question?"
    ),
    "seed": lambda d: d.update(seed=_other_hex(d["seed"])),
    "settings.k": lambda d: d["settings"].update(k=d["settings"]["k"] * 2),
    "decoy": lambda d: d["pairs"][0]["decoys"].__setitem__(0, "a made-up decoy"),
    "control signature": lambda d: d["controls"][0].update(
        signature=d["controls"][0]["signature"][::-1]
    ),
    "planted file hash": lambda d: d["dataset"].update(planted_sha256="0" * 64),
    "integrity itself": lambda d: d.update(integrity=_other_hex(d["integrity"])),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_an_edited_key_is_refused_everywhere_it_is_read(
    planted: Key, key_file: Path, what: str
) -> None:
    _edit(key_file, EDITS[what])
    with pytest.raises(KeyFileError) as info:
        load_key(key_file)
    message = str(info.value)
    assert message.startswith(f"{key_file}: the key was edited or damaged after plant wrote it")
    assert "restore the original key file" in message and "commitment" in message
    assert not any(secret in message for secret in _secrets(planted))

    for command in (["key", "show"], ["key", "commit"]):
        result = run(*command, str(key_file))
        assert result.exit_code == 1 and "edited or damaged" in result.output
    with failing_server() as server:
        result = verify_cli(key_file, server)
        assert server.requests == []
    assert result.exit_code == 2 and "edited or damaged" in result.output


def test_reformatting_a_key_is_no_edit(planted: Key, key_file: Path) -> None:
    data = json.loads(key_file.read_text())
    assert data["integrity"] == planted.integrity == planted.expected_integrity()
    key_file.write_text(json.dumps(data, sort_keys=True, ensure_ascii=True))  # same content
    assert load_key(key_file) == planted


def test_an_edited_key_object_is_refused_by_the_library(planted: Key) -> None:
    first = planted.pairs[0].model_copy(update={"signature": "another signature"})
    edited = planted.model_copy(update={"pairs": [first, *planted.pairs[1:]]})
    with failing_server() as server:
        with pytest.raises(KeyFileError, match="edited or damaged"):
            api_verify(edited, "m", base_url=server.base_url)
        assert server.requests == []


# --------------------------------------------------------------------------- earlier keys


def test_a_key_without_integrity_still_works_and_says_so(
    planted: Key, key_file: Path, tmp_path: Path
) -> None:
    _edit(key_file, lambda d: d.pop("integrity"))  # as written by an earlier tuneproof
    legacy = load_key(key_file)
    assert legacy.integrity is None and legacy.commitment() == planted.commitment()
    shown = run("key", "show", str(key_file))
    assert shown.exit_code == 0
    assert "integrity: none (written by an earlier tuneproof)" in shown.output
    assert f"commitment: {planted.commitment()}" in shown.output
    json_out, html_out = tmp_path / "r.json", tmp_path / "r.html"
    with trained_server(planted) as server:
        result = verify_cli(
            key_file,
            server,
            "--commitment",
            planted.commitment(),
            "--json",
            str(json_out),
            "--html",
            str(html_out),
        )
    assert result.exit_code == 0, result.output
    assert "the key carries no integrity check" in one_line(result.stdout)
    assert json.loads(json_out.read_text())["key_integrity"] is False
    assert "the key carries no integrity check" in html_out.read_text()


def test_key_show_says_the_key_is_checked(key_file: Path) -> None:
    shown = run("key", "show", str(key_file))
    assert shown.exit_code == 0 and "integrity: checked" in shown.output


# --------------------------------------------------------------------------- file mode


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_key_file_others_can_read_draws_a_warning(planted: Key, key_file: Path) -> None:
    warning = (
        f"warning: {key_file} is readable by other users (mode 0644) - run chmod 600 {key_file}"
    )
    key_file.chmod(0o644)
    for command in (["key", "show"], ["key", "commit"]):
        result = run(*command, str(key_file))
        assert result.exit_code == 0
        assert result.stderr.strip() == warning  # one line, on stderr, not an error
    commit = run("key", "commit", str(key_file))
    assert commit.stdout.strip() == planted.commitment()
    with trained_server(planted) as server:
        verified = verify_cli(key_file, server)
    assert verified.exit_code == 0
    # the warning first and once; verify's progress lines follow it on stderr
    assert verified.stderr.splitlines()[0] == warning
    assert verified.stderr.count("readable by other users") == 1

    key_file.chmod(0o620)
    result = run("key", "commit", str(key_file))
    assert re.search(r"is writable by other users \(mode 0620\)", result.stderr)

    key_file.chmod(0o600)
    for command in (["key", "show"], ["key", "commit"]):
        result = run(*command, str(key_file))
        assert result.exit_code == 0 and result.stderr == ""
