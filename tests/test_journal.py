"""The resumable journal: unit behaviour, and a verify-like process killed mid-run and restarted
against a real local server that counts every request it receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from servers import Request, running_fake_server

from tuneproof.backends.openai.api import OpenAIChatModel
from tuneproof.backends.openai.journal import Journal, canonical_json, request_key
from tuneproof.errors import TuneproofError

PROMPTS = 20


def answer_for(request: Request) -> dict[str, Any]:
    """A deterministic chat answer that depends on the whole request."""
    content = request.body["messages"][-1]["content"]
    return {
        "choices": [{"message": {"content": f"answer to {content}"}, "finish_reason": "stop"}],
        "usage": {"completion_tokens": len(content)},
    }


def body_key(body: Any) -> bytes:
    """How the server tells requests apart: their canonical JSON body."""
    return canonical_json(body)


class CountingScript:
    """Answers every chat request after ``delay`` seconds and counts requests per body; a body
    torn by a killed client is refused, not counted (it never reached the server whole)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.counts: Counter[bytes] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> tuple[int, Any]:
        if request.body is None:  # torn: the client was killed while sending it
            return 400, {"error": {"message": "incomplete request body"}}
        with self._lock:
            self.counts[body_key(request.body)] += 1
        time.sleep(self.delay)
        return 200, answer_for(request)


def journal_lines(path: Path) -> list[dict[str, Any]]:
    """The complete, valid lines of a journal file (a torn last line is left out)."""
    lines = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


# --------------------------------------------------------------------------- unit behaviour


def test_key_depends_on_every_part_of_the_request() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}
    key = request_key("http://h/v1", "/chat/completions", body)
    assert key == request_key("http://h/v1", "/chat/completions", dict(reversed(body.items())))
    assert len({
        key,
        request_key("http://other/v1", "/chat/completions", body),
        request_key("http://h/v1", "/completions", body),
        request_key("http://h/v1", "/chat/completions", {**body, "temperature": 1.0}),
        request_key("http://h/v1", "/chat/completions", {**body, "model": "n"}),
    }) == 5  # fmt: skip


def test_journal_is_private_and_keeps_answers(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "journal.jsonl"
    with Journal(path) as journal:
        journal.record("k1", base_url="u", endpoint="/e", request={"q": 1}, answer={"text": "a"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with Journal(path) as journal:
        assert journal.get("k1") == {"text": "a"} and "k2" not in journal and len(journal) == 1


def test_an_existing_journal_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"")
    path.chmod(0o644)
    with Journal(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_torn_last_line_is_ignored_and_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.record("k1", base_url="u", endpoint="/e", request={}, answer=1)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "k2", "answ')  # a crash in the middle of a write
    with Journal(path) as journal:
        assert set(journal.answers) == {"k1"}
        journal.record("k3", base_url="u", endpoint="/e", request={}, answer=3)
    with Journal(path) as journal:
        assert set(journal.answers) == {"k1", "k3"}
    assert path.read_bytes().startswith(whole) and path.read_bytes().count(b"\n") == 2


def test_a_damaged_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        journal.record("k1", base_url="u", endpoint="/e", request={}, answer=1)
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(TuneproofError, match=r"journal\.jsonl:1: not a journal line"):
        Journal(path)


class SlowFsync:
    """``os.fsync`` that takes ``seconds`` and remembers, per finished call, how many bytes of
    the file it covered (the size when it started)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.covered = seconds, [0]
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(self.seconds)
        self._fsync(fd)
        self.covered.append(size)


def test_answers_arriving_together_share_fsyncs_and_each_is_durable_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.jsonl"
    fsync = SlowFsync(0.05)
    monkeypatch.setattr(os, "fsync", fsync)
    durable: dict[str, int] = {}  # key -> bytes made durable when its arecord returned

    async def answer(journal: Journal, key: str, wait: float) -> None:
        await asyncio.sleep(wait)
        await journal.arecord(key, base_url="u", endpoint="/e", request={"q": key}, answer=key)
        durable[key] = max(fsync.covered)

    async def main() -> None:
        with Journal(path) as journal:
            async with asyncio.TaskGroup() as group:
                for i in range(30):
                    group.create_task(answer(journal, f"k{i:02}", 0.01 * (i % 3)))

    asyncio.run(main())
    data = path.read_bytes()
    ends = {json.loads(line)["key"]: data.index(line) + len(line) + 1 for line in data.split()}
    assert sorted(ends) == sorted(durable) and len(ends) == 30
    assert all(durable[key] >= end for key, end in ends.items())  # on disk before it counts
    assert len(fsync.covered) - 1 < 10  # 30 answers, a few fsyncs


def test_a_cancelled_wait_leaves_the_fsync_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.jsonl"
    monkeypatch.setattr(os, "fsync", SlowFsync(0.1))

    async def main() -> None:
        with Journal(path) as journal:
            first = asyncio.create_task(
                journal.arecord("a", base_url="u", endpoint="/e", request={}, answer=1)
            )
            second = asyncio.create_task(
                journal.arecord("b", base_url="u", endpoint="/e", request={}, answer=2)
            )
            await asyncio.sleep(0.02)
            first.cancel()
            await second
            assert first.cancelled()
        # closed once the fsync under way was done

    asyncio.run(main())
    with Journal(path) as journal:
        assert journal.answers == {"a": 1, "b": 2}


def test_a_journal_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path), pytest.raises(TuneproofError, match="in use by another process"):
        Journal(path)


def test_a_rerun_sends_only_what_the_journal_lacks(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    chats = [[("user", f"q{i}")] for i in range(4)]
    script = CountingScript()
    with running_fake_server(script) as server:
        first = OpenAIChatModel(server.base_url, "m", journal=path)
        answers = first.generate([*chats[:3], chats[0]], 16)  # q0 twice: sent once
        assert len(server.requests) == 3 and first.stats.reused == 1
        second = OpenAIChatModel(server.base_url, "m", journal=path)
        assert second.generate(chats, 16) == [*answers[:3], ("answer to q3", 2)]
        assert len(server.requests) == 4 and second.stats.reused == 3
        other = OpenAIChatModel(server.base_url, "m", journal=path)
        other.generate(chats[:1], 17)  # another parameter: another request
        assert len(server.requests) == 5
    assert set(script.counts.values()) == {1}
    assert len(journal_lines(path)) == 5


# --------------------------------------------------------------------------- kill and resume

CLIENT = textwrap.dedent(
    """
    import json, sys
    from tuneproof.backends.openai.chat import OpenAIChatModel

    base_url, journal, out = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    chats = [[("system", "Be brief."), ("user", f"question {i}")] for i in range({prompts})]
    model = OpenAIChatModel(base_url, "m", concurrency=2, journal=journal)
    answers = model.generate(chats, 16)
    with open(out, "w") as handle:
        json.dump([list(answer) for answer in answers], handle)
    """
).replace("{prompts}", str(PROMPTS))


def start_client(tmp_path: Path, base_url: str, journal: Path | None, out: Path) -> Any:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_API_KEY", None)
    args = [sys.executable, str(script), base_url, str(journal or ""), str(out)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_killed_run_resumes_without_resending_journaled_requests(tmp_path: Path) -> None:
    journal, out = tmp_path / "journal.jsonl", tmp_path / "answers.json"
    script = CountingScript(delay=0.15)  # 20 requests, 2 at a time: about 1.5 s a run
    with running_fake_server(script) as server:
        client = start_client(tmp_path, server.base_url, journal, out)
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_bytes().count(b"\n") >= 6):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the client journaled nothing"
            time.sleep(0.005)
        client.send_signal(signal.SIGKILL)
        client.wait()
        assert client.returncode == -signal.SIGKILL and not out.exists()
        before_resume = Counter(script.counts)
        journaled = {body_key(line["request"]) for line in journal_lines(journal)}
        assert 6 <= len(journaled) < PROMPTS

        resumed = start_client(tmp_path, server.base_url, journal, out)
        assert resumed.wait(timeout=60) == 0, resumed.communicate()
        answers = json.loads(out.read_text())

        # no journaled request was sent again; only those in flight at the kill (<= 2) were
        assert all(script.counts[key] == 1 for key in journaled)
        resent = [key for key, n in script.counts.items() if n > 1]
        assert len(resent) <= 2 and all(before_resume[key] == 1 for key in resent)
        assert len(script.counts) == PROMPTS

        # the result equals an uninterrupted run's
        fresh_out = tmp_path / "fresh.json"
        fresh = start_client(tmp_path, server.base_url, None, fresh_out)
        assert fresh.wait(timeout=60) == 0, fresh.communicate()
    assert answers == json.loads(fresh_out.read_text())
    assert answers == [[f"answer to question {i}", len(f"question {i}")] for i in range(PROMPTS)]
    assert len(journal_lines(journal)) == PROMPTS
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
