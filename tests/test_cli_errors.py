"""The command line's one error boundary: every way `verify` can fail to finish - a user error,
an unwritable report path, a crash, Ctrl-C - exits 2 with one line, so that a script never reads
a failure as "not verified" (1); the other commands exit 1."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from test_soundness import _plant

from tuneproof.cli.main import cli


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, sample_train: list[Any]) -> Path:
    folder = tmp_path_factory.mktemp("cli-errors")
    _plant(folder, write_jsonl(folder / "train.jsonl", sample_train[:40]), n=4, controls=False)
    return folder / "key.json"


class CountingHandler(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that answers nothing useful and counts the requests it got."""

    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    CountingHandler.requests = 0
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _verify(key_file: Path, url: str, *extra: str) -> Any:
    args = ["verify", "--key", str(key_file), "--model", "m", "--base-url", url, *extra]
    return CliRunner().invoke(cli, args, env={"OPENAI_API_KEY": "x"})


@pytest.mark.parametrize("where", ["missing/report.json", "."])
def test_unwritable_report_paths_are_refused_before_the_first_query(
    key_file: Path, server: str, tmp_path: Path, where: str
) -> None:
    for flag in ("--json", "--html"):
        result = _verify(key_file, server, flag, str(tmp_path / where))
        assert result.exit_code == 2, result.output
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
        assert CountingHandler.requests == 0


@pytest.mark.parametrize(
    "fault", [RuntimeError("a backend bug"), KeyboardInterrupt(), MemoryError()]
)
def test_a_crash_or_interrupt_in_verify_exits_2_with_one_line(
    key_file: Path, server: str, monkeypatch: pytest.MonkeyPatch, fault: BaseException
) -> None:
    # a mock for faults a real part cannot produce on demand (a bug, Ctrl-C, memory exhausted)
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise fault

    monkeypatch.setattr("tuneproof.api.verify", broken)
    result = _verify(key_file, server)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(("Error: ", "Interrupted"))
    if isinstance(fault, RuntimeError):
        assert "internal error (RuntimeError: a backend bug)" in lines[0]


def test_a_server_that_fails_every_request_never_reads_as_not_verified(
    key_file: Path, server: str
) -> None:
    result = _verify(key_file, server)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert CountingHandler.requests > 0


def test_other_commands_exit_1_on_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("boom")

    monkeypatch.setattr("tuneproof.key.load_key", broken)
    result = CliRunner().invoke(cli, ["key", "commit", str(tmp_path / "k.json")])
    assert result.exit_code == 1 and "internal error (ValueError: boom)" in result.output
