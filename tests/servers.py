"""Local HTTP servers for tests, all on 127.0.0.1.

- :func:`running_llama_server`: llama-cpp-python's real OpenAI-compatible server. Use the
  ``llama_server`` fixture (session scope) by importing it into a test module::

      from servers import llama_server  # noqa: F401  (a pytest fixture)

  It serves the embedded SmolLM2 GGUF with one thread, so it does not fight other work on a
  2-core machine.
- :func:`running_fake_server`: a tiny stdlib server whose answers a test scripts, for servers that
  misbehave (no log-probs, 429s, odd shapes). A script answers ``(status, JSON)``, or a
  :class:`Reply` to add headers, answer late (a hang past the client's time-out), drop the
  connection without answering, send raw bytes (malformed JSON), trickle the body a few bytes a
  second, or send a giant body streamed from a constant chunk (never held in memory).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LocalServer:
    """A server listening on 127.0.0.1: ``root`` is its URL, ``base_url`` the OpenAI one;
    ``watch`` tells whether its process is still alive."""

    root: str
    model: str
    watch: ServerWatch | None = None

    @property
    def base_url(self) -> str:
        return self.root + "/v1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def running_llama_server(
    model_path: Path, *, n_ctx: int = 2048, start_timeout: float = START_TIMEOUT_S
) -> Iterator[LocalServer]:
    """Start ``python -m llama_cpp.server`` on a free port of 127.0.0.1, wait until it answers
    ``GET /v1/models`` (at most ``start_timeout`` seconds), yield it, and stop it.

    Fails the test with the server's stderr if it exits early or never answers.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail(
            "llama-cpp-python is not installed - run "
            "`.venv/bin/python -m pip install 'llama-cpp-python[server]'` (part of the dev extra)"
        )
    port = free_port()
    root = f"http://{HOST}:{port}"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--host", HOST,
        "--port", str(port),
        "--n_threads", "1",
        "--n_threads_batch", "1",
        "--n_ctx", str(n_ctx),
    ]  # fmt: skip
    with _serving(command, root, "the llama.cpp server", start_timeout) as watch:
        yield LocalServer(root=root, model=model_path.name, watch=watch)


@contextlib.contextmanager
def running_transformers_server(
    model_folder: Path, *, start_timeout: float = START_TIMEOUT_S
) -> Iterator[LocalServer]:
    """Start ``transformers serve FOLDER`` (CPU, one thread) on a free port of 127.0.0.1, wait
    until it answers ``GET /v1/models``, yield it (the model name is the folder path), stop it."""
    port = free_port()
    root = f"http://{HOST}:{port}"
    executable = Path(sys.executable).with_name("transformers")
    command = [str(executable), "serve", str(model_folder), "--host", HOST, "--port", str(port),
               "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with _serving(command, root, "`transformers serve`", start_timeout, env) as watch:
        yield LocalServer(root=root, model=str(model_folder), watch=watch)


@dataclass
class ServerWatch:
    """A started server process and its log: says whether (and how) it died."""

    process: subprocess.Popen[bytes]
    log: IO[bytes]
    name: str

    def death_notice(self, when: str) -> str | None:
        """None while the server runs; else its exit status or signal and its log's tail."""
        code = self.process.poll()
        if code is None:
            return None
        how = (
            f"was killed by signal {signal.Signals(-code).name} ({-code})"
            if code < 0
            else f"exited with code {code}"
        )
        return f"{self.name} {how} {when}; the end of its log:\n{_tail(self.log)}"

    def check(self, when: str) -> None:
        """Fail the test with :meth:`death_notice` when the server is no longer running."""
        notice = self.death_notice(when)
        if notice:
            pytest.fail(notice, pytrace=False)


@contextlib.contextmanager
def _serving(
    command: list[str],
    root: str,
    name: str,
    start_timeout: float,
    env: dict[str, str] | None = None,
) -> Iterator[ServerWatch]:
    """Run a server ``command``, wait until ``root``/v1/models answers (failing the test with
    the server's output if it exits or times out), yield its :class:`ServerWatch`, and stop it.
    A server that dies inside the ``with`` block fails the test with its exit status or signal
    and its log, not with the client's connection error."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        watch = ServerWatch(process, log, name)
        try:
            deadline = time.monotonic() + start_timeout
            while not _answers(root + "/v1/models"):
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with code {process.returncode}:\n{_tail(log)}")
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{name} did not answer within {start_timeout:.0f} s:\n{_tail(log)}"
                    )
                time.sleep(0.2)
            try:
                yield watch
            except Exception:
                watch.check("while it was serving")  # the cause, chained to the client's error
                raise
            watch.check("while it was serving")
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tail(log: IO[bytes], limit: int = 4000) -> str:
    log.seek(0)
    return log.read().decode("utf-8", errors="replace")[-limit:]


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LocalServer]:
    """llama-cpp-python's server with the embedded SmolLM2 GGUF, one per test session."""
    from tuneproof.embedded import embedded_gguf_path

    with running_llama_server(embedded_gguf_path()) as server:
        yield server


@pytest.fixture(autouse=True)
def llama_server_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that uses the session's llama.cpp server (directly or through another
    fixture) fails with the server's exit status or signal and its log if the server died
    before or during it, rather than with the client's connection error."""
    if "llama_server" not in request.fixturenames:
        yield
        return
    watch = request.getfixturevalue("llama_server").watch
    if watch:
        watch.check("before this test (in an earlier one)")
    yield
    if watch:
        watch.check("during this test")


# --------------------------------------------------------------------------- scripted servers


@dataclass(frozen=True)
class Request:
    """One request a fake server received."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    """A scripted answer: ``status`` and JSON ``body`` with extra ``headers``, sent after
    ``delay`` seconds (a wait that ends when the client hangs up); or, with ``drop``, the
    connection closed with no answer at all.

    ``raw`` is sent as the body instead of the JSON of ``body`` (bytes as they are); ``rate``
    trickles the body at that many bytes a second (headers at once; with ``trickle_head`` the
    status line and headers too); ``giant`` sends that many
    bytes of filler as the body instead, with a ``Content-Length`` when ``declared``, otherwise
    until the client hangs up or the count is reached, then closing the connection. Every
    answer stops as soon as the client hangs up."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    raw: bytes | None = None
    rate: float | None = None
    trickle_head: bool = False
    giant: int | None = None
    declared: bool = True


GIANT_CHUNK = b" " * 2**20
"""A giant body's filler, 1 MiB at a time (JSON whitespace: a client that read it all and
parsed it would find no value)."""


Script = Callable[[Request], tuple[int, Any] | Reply]
"""A fake server's behaviour: request -> (HTTP status, JSON answer) or a :class:`Reply`."""


@dataclass
class FakeServer:
    """A scripted server on 127.0.0.1 and every request it received, in order."""

    root: str
    requests: list[Request] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


@contextlib.contextmanager
def running_fake_server(script: Script) -> Iterator[FakeServer]:
    """Serve ``script`` on a free port of 127.0.0.1 in a thread; stop it on exit."""
    received: list[Request] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                self.command,
                self.path,
                json.loads(raw) if raw else None,
                {name.lower(): value for name, value in self.headers.items()},
            )
            received.append(request)
            outcome = script(request)
            reply = outcome if isinstance(outcome, Reply) else Reply(*outcome)
            if reply.drop:  # close the socket with no answer: the client sees a dropped connection
                self.close_connection = True
                return
            if not self._wait(reply.delay):
                self.close_connection = True
                return
            data = json.dumps(reply.body).encode() if reply.raw is None else reply.raw
            length = len(data) if reply.giant is None else reply.giant
            headers = {"content-type": "application/json", **reply.headers}
            if reply.declared:
                headers["content-length"] = str(length)
            else:
                self.close_connection = True  # the body ends when the connection does
            try:
                if reply.trickle_head and reply.rate is not None:
                    lines = [
                        f"{self.protocol_version} {reply.status} Scripted",
                        *map(": ".join, headers.items()),
                    ]
                    data = "".join(f"{line}\r\n" for line in [*lines, ""]).encode() + data
                else:
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                if reply.giant is not None:
                    for start in range(0, length, len(GIANT_CHUNK)):
                        self.wfile.write(memoryview(GIANT_CHUNK)[: length - start])
                elif reply.rate is not None:
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        if not self._wait(1 / reply.rate):
                            break
                else:
                    self.wfile.write(data)
            except OSError:  # the client gave up waiting (a hang, a trickle, a giant body)
                self.close_connection = True

        def _wait(self, seconds: float) -> bool:
            """Sleep ``seconds``; False as soon as the client hangs up."""
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                if readable:  # the request was read in full: readable now means closed
                    try:
                        if not self.connection.recv(1, socket.MSG_PEEK):
                            return False
                    except OSError:
                        return False
                    time.sleep(min(left, 0.05))  # bytes of a next request: keep waiting
            return True

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True  # a handler still writing never blocks the test's end
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FakeServer(root=f"http://{HOST}:{server.server_port}", requests=received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
