"""The fault catalogue: `tuneproof verify` against a real local server that misbehaves on purpose.

Every case runs the real command line (click's CliRunner; a real subprocess for the kill) on a
small planted key (4 pairs: 4 planted and 4 clean chat queries) against an *oracle* server that
answers each planted prompt with its signature, as a model trained on the planted file would,
unless the case's fault says otherwise; it has no log-prob endpoints (404), so that log-prob
tests are skipped and the verdict rests on the answers. For each case: the exit code, a phrase of
the report (the verdict headline on stdout, a failure reason in the JSON report) or of stderr,
and the number of chat requests the server counted.

The command line has no options for the per-attempt time-out and the retries (their defaults,
120 s and 4 retries, would make a hang take minutes), so the cases name their model
``catalogue:m``: a remote backend registered for the test (the registry of
:mod:`tuneproof.backends.base`) that is the real OpenAI-compatible backend with a 2 s time-out
and 2 retries (1 s or 1 retry where a case says so). The kill case runs the plain
``--base-url`` backend with its defaults. The catalogue is documented in docs/verification.md
("Fault catalogue"); keep the two in step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from servers import FakeServer, Reply, Request, running_fake_server
from test_cli_errors import key_file  # noqa: F401  (a pytest fixture: a planted key, 4 pairs)

from tuneproof.backends.base import BACKENDS, Backend
from tuneproof.backends.openai.chat import OpenAIChatModel
from tuneproof.backends.openai.journal import canonical_json
from tuneproof.cli.main import cli
from tuneproof.key import load_key
from tuneproof.types import QueryKind
from tuneproof.verification.queries import build_queries

CHAT = "/v1/chat/completions"
QUERIES = 8
"""Chat queries of a run with the key: 4 planted, 4 clean (no held-out controls)."""
SETTINGS: dict[str, float] = {"timeout": 2.0, "max_retries": 2}
"""The catalogue backend's per-attempt time-out and retries (a case may change them)."""
SCORING = 4
"""/apply-template requests of the log-prob step: one per pair (its first placement)."""
FAST = {"retry-after-ms": "20"}
"""A wait the SDK honours on any retried status: keeps the storms quick."""

Fault = Callable[[Request, int], Reply | None]
"""(chat request, its attempt number for this body, from 1) -> the reply, or None: the
oracle's own answer."""


def catalogue_model(base_url: str, name: str, **options: Any) -> OpenAIChatModel:
    """The ``catalogue`` backend: the real one, with the case's time-out and retries."""
    return OpenAIChatModel(
        base_url,
        name,
        timeout=SETTINGS["timeout"],
        max_retries=int(SETTINGS["max_retries"]),
        **options,
    )


def chat_answer(text: str) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    return {"choices": [{**choice, "finish_reason": "stop"}], "usage": {"completion_tokens": 3}}


class Oracle:
    """A server script: every planted prompt answered with its signature, other prompts with
    a plain sentence, unless ``fault`` replies instead; other paths 404 (no log-probs)."""

    def __init__(self, key_path: Path, fault: Fault | None = None, delay: float = 0.0) -> None:
        queries = build_queries(load_key(key_path))
        self.signatures = {
            canonical_json([list(turn) for turn in q.chat]): q.pair.signature
            for q in queries
            if q.kind is QueryKind.PLANTED
        }
        self.fault, self.delay = fault, delay
        self.attempts: Counter[bytes] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        if request.path != CHAT:
            return Reply(404, {"detail": "Not Found"})
        body = canonical_json(request.body)
        with self._lock:
            self.attempts[body] += 1
            attempt = self.attempts[body]
        reply = self.fault(request, attempt) if self.fault else None
        if reply is not None:
            return reply
        time.sleep(self.delay)
        chat = canonical_json([[m["role"], m["content"]] for m in request.body["messages"]])
        return Reply(200, chat_answer(self.signatures.get(chat, "I am not sure about that.")))


def first(n: int, reply: Reply) -> Fault:
    """``reply`` to the first ``n`` attempts of every request, then the oracle's answer."""
    return lambda request, attempt: reply if attempt <= n else None


def always(reply: Reply) -> Fault:
    return lambda request, attempt: reply


def answer_two_then_hang() -> Fault:
    """The first two requests answered, every later one left hanging (until the client goes)."""
    lock, seen = threading.Lock(), []

    def fault(request: Request, attempt: int) -> Reply | None:
        with lock:
            seen.append(request)
            answered = len(seen) <= 2
        return None if answered else Reply(200, chat_answer("late"), delay=60)

    return fault


@dataclass(frozen=True)
class Case:
    id: str
    fault: Fault
    exit_code: int
    phrase: str
    """in stdout or stderr, or in a failed query's reason in the JSON report"""
    chat: int | tuple[int, int]
    """chat requests counted at the server: exact, or (at least, at most)"""
    args: tuple[str, ...] = ()
    settings: dict[str, float] = field(default_factory=dict)
    others: int | tuple[int, int] = (1, SCORING)
    """requests to other paths (log-prob scoring: /apply-template answers 404 and the first 404
    stops the others, some of which may already be sent), exact or (at least, at most)"""
    within: float = 30.0
    """seconds the run may take: a generous bound that proves "no hang", nothing more"""


RETRIES = int(SETTINGS["max_retries"])

CASES = [
    Case("429 storm, then recovery",
         first(2, Reply(429, {"error": {"message": "slow down"}}, FAST)),
         0, "VERIFIED", 3 * QUERIES),
    Case("429 storm forever",
         always(Reply(429, {"error": {"message": "slow down"}}, FAST)),
         2, "HTTP 429 on /chat/completions: slow down (3 attempts)",
         (RETRIES + 1) * QUERIES),
    Case("5xx, then recovery",
         first(1, Reply(500, {"error": {"message": "boom"}})),
         0, "VERIFIED", 2 * QUERIES),
    Case("5xx forever",
         always(Reply(503, {"error": {"message": "overloaded"}})),
         2, "HTTP 503 on /chat/completions: overloaded (3 attempts)",
         (RETRIES + 1) * QUERIES),
    Case("a hang past the time-out",
         always(Reply(200, chat_answer("late"), delay=60)),
         2, "did not answer in full within 1 s after 2 attempts", 2 * QUERIES,
         settings={"timeout": 1.0, "max_retries": 1}),
    Case("a 1 byte/s trickle",
         always(Reply(200, chat_answer("slow"), rate=1.0)),
         2, "did not answer in full within 2 s after 2 attempts", 2 * QUERIES,
         settings={"max_retries": 1}),
    Case("a giant body, declared",
         always(Reply(200, giant=150_000_000)),
         2, "declared an answer of 150,000,000 bytes, over the 32 MiB cap - refused unread",
         QUERIES),
    Case("a giant body, streamed",
         always(Reply(200, giant=150_000_000, declared=False)),
         2, "sent more than the 32 MiB cap on an answer - cut off there", QUERIES),
    Case("malformed JSON",
         always(Reply(200, raw=b'{"choices": [{"message": {"content": "hi')),
         2, "answered /chat/completions with malformed JSON", QUERIES),
    Case("empty choices",
         always(Reply(200, {"choices": []})),
         2, "answered /chat/completions in an unknown shape", QUERIES),
    Case("a dropped connection, then recovery",
         first(1, Reply(drop=True)),
         0, "VERIFIED", 2 * QUERIES),
    Case("401",
         always(Reply(401, {"error": {"message": "invalid api key"}})),
         2, "refused the request (HTTP 401: invalid api key) - set OPENAI_API_KEY", (1, 4),
         others=0),
    Case("--deadline passes mid-run",
         answer_two_then_hang(),
         2, "the deadline of 1.5 s passed before", 4, args=("--deadline", "1.5"),
         settings={"timeout": 30.0}, others=0, within=15.0),
]  # fmt: skip


@pytest.fixture
def catalogue(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ``catalogue`` backend in the registry, for one test."""
    backend = Backend(
        "catalogue",
        f"{__name__}:catalogue_model",
        None,
        remote=True,
        options=BACKENDS["openai"].options,
    )
    monkeypatch.setitem(BACKENDS, "catalogue", backend)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-catalogue")
    yield


def run_cli(key: Path, server: FakeServer, report: Path, *args: str) -> Any:
    argv = ["verify", "--key", str(key), "--model", "catalogue:m",
            "--base-url", server.base_url, "--json", str(report), *args]  # fmt: skip
    return CliRunner().invoke(cli, argv)


def counted(server: FakeServer) -> tuple[int, int]:
    chat = sum(r.path == CHAT for r in server.requests)
    return chat, len(server.requests) - chat


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(
    case: Case,
    key_file: Path,  # noqa: F811
    catalogue: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in case.settings.items():
        monkeypatch.setitem(SETTINGS, name, value)
    report = tmp_path / "report.json"
    with running_fake_server(Oracle(key_file, case.fault)) as server:
        start = time.monotonic()
        result = run_cli(key_file, server, report, *case.args)
        took = time.monotonic() - start
        chat, others = counted(server)
    assert result.exit_code == case.exit_code, result.output
    assert "Traceback" not in result.output
    reasons = (
        [r["error"] for r in json.loads(report.read_text())["results"] if r["error"]]
        if report.exists()
        else []
    )
    assert any(case.phrase in text for text in [result.output, *reasons]), (result.output, reasons)
    for got, want in ((chat, case.chat), (others, case.others)):
        low, high = (want, want) if isinstance(want, int) else want
        assert low <= got <= high, (chat, others)
    assert took < case.within
    if case.exit_code == 2 and report.exists():  # a report: inconclusive, never a verdict
        assert json.loads(report.read_text())["verdict"] == "inconclusive"


def test_apply_template_500_skips_logprob_tests(
    key_file: Path,  # noqa: F811
    catalogue: None,
    tmp_path: Path,
) -> None:
    """llama.cpp answers /apply-template with HTTP 500 for a chat template it cannot render:
    the log-prob tests are skipped, as for a server without log-probs, and the answers decide."""
    oracle = Oracle(key_file)

    def script(request: Request) -> Reply:
        if request.path == "/apply-template":
            return Reply(500, {"error": {"message": "template error: roles must alternate"}})
        return oracle(request)

    report = tmp_path / "report.json"
    with running_fake_server(script) as server:
        result = run_cli(key_file, server, report)
        chat, others = counted(server)
    assert result.exit_code == 0, result.output
    assert "VERIFIED" in result.output
    skipped = json.loads(report.read_text())["logprob_skipped"]
    assert len(skipped) == 1 and "template error: roles must alternate" in skipped[0]
    assert chat == QUERIES and others == SCORING * (RETRIES + 1)  # retried like any 5xx


# --------------------------------------------------------------------------- kill and resume


def start_verify(key: Path, base_url: str, journal: Path, report: Path) -> Any:
    argv = [sys.executable, "-m", "tuneproof.cli.main", "verify", "--key", str(key),
            "--model", "m", "--base-url", base_url, "--journal", str(journal),
            "--json", str(report)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_killed_verify_resumes_from_its_journal_without_resending(
    key_file: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    journal, report = tmp_path / "journal.jsonl", tmp_path / "report.json"
    oracle = Oracle(key_file, delay=0.4)  # 4 planted queries at once, then 4 clean
    with running_fake_server(oracle) as server:
        first_run = start_verify(key_file, server.base_url, journal, report)
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 2):
            assert first_run.poll() is None, first_run.communicate()
            assert time.monotonic() < deadline, "the first run journaled nothing"
            time.sleep(0.005)
        first_run.send_signal(signal.SIGKILL)
        first_run.wait()
        assert first_run.returncode == -signal.SIGKILL and not report.exists()
        journaled = {
            canonical_json(json.loads(line)["request"])
            for line in journal.read_bytes().split(b"\n")
            if line.strip()
        }
        before = Counter(oracle.attempts)

        resumed = start_verify(key_file, server.base_url, journal, report)
        out, err = resumed.communicate(timeout=90)
    assert resumed.returncode == 0, (out, err)
    assert b"VERIFIED" in out
    assert all(oracle.attempts[body] == 1 for body in journaled)  # nothing answered resent
    resent = [body for body, n in oracle.attempts.items() if n > 1]
    assert all(before[body] == 1 for body in resent) and len(resent) <= 4  # in flight at the kill
    assert len(oracle.attempts) == QUERIES
    assert json.loads(report.read_text())["failed_queries"] == 0
