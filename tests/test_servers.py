"""The test servers' own harness: a server that dies mid-test is reported as such (its signal or
exit status and its log), not as the client's connection error."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from servers import HOST, _serving, free_port

# A real HTTP server that answers GET /v1/models, then dies on the first POST the way the
# natively built llama.cpp did here (SIGILL), or exits with a status.
DYING_SERVER = textwrap.dedent(
    """
    import os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_POST(self):
            print("about to die: illegal instruction in libggml-cpu", flush=True)
            if sys.argv[2] == "signal":
                os.kill(os.getpid(), signal.SIGILL)
            os._exit(3)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


def _post(root: str) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(root + "/v1/completions", data=b"{}"), timeout=5)


@pytest.mark.parametrize(("how", "expected"), [("signal", "SIGILL"), ("exit", "code 3")])
def test_a_server_that_dies_mid_test_is_reported_with_its_status_and_log(
    tmp_path: Path, how: str, expected: str
) -> None:
    script = tmp_path / "dying.py"
    script.write_text(DYING_SERVER)
    port = free_port()
    root = f"http://{HOST}:{port}"
    command = [sys.executable, str(script), str(port), how]
    with (
        pytest.raises(pytest.fail.Exception) as failure,
        _serving(command, root, "the test server", 30.0),
    ):
        with pytest.raises(OSError):  # URLError and ConnectionError are OSErrors
            _post(root)  # the client only sees a dropped connection
        _post(root)
    message = str(failure.value)
    assert "the test server" in message and expected in message
    assert "about to die: illegal instruction" in message  # the tail of its log


def test_a_server_that_stays_up_passes_through(tmp_path: Path) -> None:
    script = tmp_path / "dying.py"
    script.write_text(DYING_SERVER)
    port = free_port()
    root = f"http://{HOST}:{port}"
    with _serving([sys.executable, str(script), str(port), "exit"], root, "server", 30.0) as w:
        assert w.death_notice("now") is None
