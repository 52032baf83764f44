"""A resumable journal of answered requests: one JSON line per answer, fsynced as it arrives.

A re-run after a crash (or a kill, or a network failure) looks every request up by its key first
and sends only the requests that were never answered, so a paid API is never paid twice for the
same answer.

- **Key**: the SHA-256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the request's
  public base URL (no credentials, see :func:`tuneproof.backends.openai.client.public_url`), the
  endpoint, and the exact JSON body sent (model, messages or prompt, every decoding parameter).
  Change any of them and the request is new.
- **Lines**: ``{"key", "base_url", "endpoint", "request", "answer", "at"}``. Only answers are
  written (a failed request is retried on the next run). Each line is written with one ``write``
  and made durable with ``fsync`` before the answer is used. One ``fsync`` makes every line
  written before it durable, so answers arriving together share one (a group commit:
  :meth:`Journal.arecord` waits for the next ``fsync`` that starts after its line was written,
  in a worker thread so that the event loop keeps sending).
- **Crashes**: a line cut short by a crash (no final newline, or not valid JSON) is the last line
  of the file; it is ignored and cut off when the journal is opened again. A bad line anywhere
  else means the file was edited or damaged, and opening stops with an error naming the line.
- **Secrets**: the journal is as secret as the key: it holds every request body (the triggers,
  also the held-out controls' that are never uploaded, and the signatures and decoys scored for
  log-probs) and the answers (in a verified run, the signatures), so it is created with mode
  0600 (and an existing file is set to 0600); ``verify`` says so after the verdict and deletes
  it with ``--delete-journal``.
- **One writer**: the file is locked (``flock``) while open; a second process using the same
  journal at the same time is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from tuneproof.errors import TuneproofError

JOURNAL_MODE = 0o600


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def request_key(base_url: str, endpoint: str, body: Any) -> str:
    """The journal key of a request: SHA-256 (hex) of the canonical JSON of the public base URL,
    the endpoint and the JSON body sent."""
    document = {"base_url": base_url, "endpoint": endpoint, "request": body}
    return hashlib.sha256(canonical_json(document)).hexdigest()


class Journal:
    """An open journal file: answers by key, and :meth:`record` to append one durably.

    Use as a context manager (``with Journal(path) as journal``); the file is locked until it is
    closed. Raises :class:`TuneproofError` when the file cannot be opened, is locked by another
    process, or has a damaged line before its last one.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.answers: dict[str, Any] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, JOURNAL_MODE)
        except OSError as exc:
            raise TuneproofError(
                f"cannot open the journal {self.path}: {exc.strerror} - "
                "give --journal a writable path"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise TuneproofError(
                    f"the journal {self.path} is in use by another process - wait for it to "
                    "finish or give another --journal path"
                ) from exc
            os.fchmod(fd, JOURNAL_MODE)
            self._load(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._lock = threading.Condition()
        self._written = self._synced = 0  # lines appended, lines known to be durable
        self._syncing = 0  # fsyncs under way: close() waits for them
        self._flush: asyncio.Future[None] | None = None  # the fsync arecord waits for

    def _load(self, fd: int) -> None:
        """Read every complete line; cut off a torn last line."""
        data = b""
        while chunk := os.pread(fd, 1 << 20, len(data)):
            data += chunk
        lines = data.split(b"\n")
        # the part after the last newline is empty, or a line cut short by a crash
        complete, good_end = lines[:-1], len(data) - len(lines[-1])
        for number, raw in enumerate(complete, start=1):
            entry = _parse(raw)
            if entry is None:
                if number == len(complete) and not lines[-1]:
                    good_end -= len(raw) + 1  # a damaged last line is a torn write: drop it
                    break
                raise TuneproofError(
                    f"{self.path}:{number}: not a journal line (damaged or edited) - "
                    "delete that line, or the file to start afresh"
                )
            self.answers[entry["key"]] = entry["answer"]
        if good_end < len(data):
            os.ftruncate(fd, good_end)
            os.fsync(fd)

    def __contains__(self, key: str) -> bool:
        return key in self.answers

    def __len__(self) -> int:
        return len(self.answers)

    def get(self, key: str) -> Any:
        """The journaled answer of ``key``, or None."""
        return self.answers.get(key)

    def record(self, key: str, *, base_url: str, endpoint: str, request: Any, answer: Any) -> None:
        """Append the answer of one request as one line and fsync it before returning.

        Safe to call from several threads at once: lines never interleave, and the fsyncs run
        in parallel (each makes every line written before it durable)."""
        self._append(key, base_url=base_url, endpoint=endpoint, request=request, answer=answer)
        self._sync()

    async def arecord(
        self, key: str, *, base_url: str, endpoint: str, request: Any, answer: Any
    ) -> None:
        """:meth:`record` for an event loop: append the line, then wait until an ``fsync``
        that started after it was written has finished (in a worker thread; answers that arrive
        while one runs share the next one). Use it from one event loop at a time."""
        line = self._append(
            key, base_url=base_url, endpoint=endpoint, request=request, answer=answer
        )
        while self._synced < line:
            flush = self._flush
            if flush is None or flush.done():
                flush = self._flush = asyncio.ensure_future(asyncio.to_thread(self._sync))
            await asyncio.shield(flush)  # a cancelled waiter leaves it to the others

    def _append(self, key: str, *, base_url: str, endpoint: str, request: Any, answer: Any) -> int:
        """Write the line of one answer (not yet durable); its number."""
        entry = {
            "key": key,
            "base_url": base_url,
            "endpoint": endpoint,
            "request": request,
            "answer": answer,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        line = canonical_json(entry) + b"\n"
        with self._lock:
            if self._fd is None:
                raise ValueError("the journal is closed")
            written = os.write(self._fd, line)
            self.answers[key] = answer
            self._written += 1
            number = self._written
        if written != len(line):  # pragma: no cover - a full disk; the next run cuts it off
            raise TuneproofError(f"cannot write to the journal {self.path} (disk full?)")
        return number

    def _sync(self) -> None:
        """fsync: every line written before the call is durable once it returns."""
        with self._lock:
            if self._fd is None:
                raise ValueError("the journal is closed")
            fd, upto = self._fd, self._written
            self._syncing += 1
        done = False
        try:
            os.fsync(fd)
            done = True
        finally:
            with self._lock:
                if done:
                    self._synced = max(self._synced, upto)
                self._syncing -= 1
                self._lock.notify_all()

    def close(self) -> None:
        """Release the lock and close the file once the fsyncs under way are done
        (idempotent)."""
        with self._lock:
            self._lock.wait_for(lambda: not self._syncing)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _parse(raw: bytes) -> dict[str, Any] | None:
    """A journal line as a dict with ``key`` and ``answer``, or None if it is not one."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if isinstance(entry, dict) and isinstance(entry.get("key"), str) and "answer" in entry:
        return entry
    return None
