"""Many requests to an OpenAI-compatible server: concurrency, retries, back-off, the journal.

:class:`RequestRunner` sends JSON bodies with ``openai.AsyncOpenAI`` on an ``asyncio`` loop, at
most ``concurrency`` at a time. The SDK's own retries are off, so that the policy is ours and the
same whatever the SDK version:

- every request is tried at most ``max_retries + 1`` times;
- 408, 409, 429, 5xx, time-outs and dropped connections are retried; after ``Retry-After``
  (``retry-after-ms``, seconds, or an HTTP date) plus up to 10% jitter when the server sends one,
  otherwise after an exponential back-off with jitter: ``backoff_base * 2**retry``, at most
  ``backoff_max``, times a uniform factor in [0.5, 1];
- a server asking to wait longer than ``max_retry_after`` seconds is not waited for;
- statuses that retrying cannot fix are raised at once, as the caller's ``fatal`` decides (401,
  403, a missing endpoint...); any other final failure comes back per request as a
  :class:`tuneproof.types.QueryFailure` with a one-line reason.

With a journal (:mod:`tuneproof.backends.openai.journal`) the answers already there are not asked
again,
each new answer is appended (and fsynced, in a worker thread so that the loop keeps sending) as
soon as it arrives, and identical requests of one batch are sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tuneproof.backends.openai.client import ServerError, api_key, one_line, server_error
from tuneproof.backends.openai.journal import Journal, request_key
from tuneproof.types import QueryFailure

if TYPE_CHECKING:
    from openai import APIStatusError, AsyncOpenAI

DEFAULT_CONCURRENCY = 8
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
MAX_RETRY_AFTER_S = 120.0
RETRY_STATUS = frozenset({408, 409, 429})
"""Statuses worth retrying besides 5xx: time-out, conflict, rate limit."""

T = TypeVar("T")
Answer = dict[str, Any]
Parse = Callable[[Any], Answer]
"""Turns a server's JSON answer into what is returned and journaled; raising KeyError,
IndexError, TypeError or ValueError makes it a :class:`QueryFailure`."""
Fatal = Callable[["APIStatusError", str], "ServerError | None"]
"""(error, endpoint) -> the error to raise at once, or None to retry or record it."""


@dataclass
class RequestStats:
    """Counts over a runner's life: HTTP attempts sent, retries, answers reused (from the
    journal, or shared by identical requests of one batch), requests that failed for good."""

    sent: int = 0
    retries: int = 0
    reused: int = 0
    failed: int = 0


def retry_after_seconds(
    headers: Mapping[str, str] | None, now: float | None = None
) -> float | None:
    """The wait a server asks for: ``retry-after-ms``, or ``Retry-After`` in seconds or as an
    HTTP date (relative to ``now``, a Unix time). None when absent or unreadable."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        return max(0.0, seconds) if math.isfinite(seconds) else None
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine made by ``factory`` to completion from synchronous code; in a worker
    thread with its own loop when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class RequestRunner:
    """Sends requests to one server (see the module docstring). ``source`` is the server's
    public URL, used in journal keys and messages; ``model`` names it in error messages."""

    def __init__(
        self,
        base_url: str,
        source: str,
        model: str,
        *,
        api_key_env: str,
        concurrency: int,
        timeout: float,
        max_retries: int,
        journal: Path | None,
        backoff_base: float = BACKOFF_BASE_S,
        backoff_max: float = BACKOFF_MAX_S,
        max_retry_after: float = MAX_RETRY_AFTER_S,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ServerError(
                f"need concurrency >= 1, max_retries >= 0 and timeout > 0 "
                f"(got {concurrency}, {max_retries} and {timeout})"
            )
        self.base_url, self.source, self.model = base_url, source, model
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.journal = journal
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.max_retry_after = max_retry_after
        self.stats = RequestStats()
        self._random = random.Random()

    def client(self) -> AsyncOpenAI:
        """A new SDK client (one per event loop) with the SDK's retries off."""
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ServerError(
                "OpenAI-compatible models need the 'openai' extra - "
                "run `pip install 'tuneproof[openai]'`"
            ) from exc
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key(self.api_key_env),
            timeout=self.timeout,
            max_retries=0,
        )

    def error(self, exc: Exception, path: str, attempts: int = 1) -> ServerError:
        """The one-line :class:`ServerError` for an SDK exception."""
        return server_error(
            exc,
            source=self.source,
            model=self.model,
            path=path,
            api_key_env=self.api_key_env,
            timeout=self.timeout,
            attempts=attempts,
        )

    async def exchange(
        self, endpoint: str, requests: Sequence[tuple[dict[str, Any], Parse]], fatal: Fatal
    ) -> list[Answer | QueryFailure]:
        """Answer every (body, parse) request posted to ``endpoint``, in input order."""
        keys = [request_key(self.source, endpoint, body) for body, _ in requests]
        results: dict[str, Answer | QueryFailure] = {}
        with contextlib.ExitStack() as stack:
            journal = stack.enter_context(Journal(self.journal)) if self.journal else None
            if journal is not None:
                results.update((k, journal.answers[k]) for k in keys if k in journal)
            todo = {k: r for k, r in zip(keys, requests, strict=True) if k not in results}
            self.stats.reused += len(keys) - len(todo)
            if todo:
                async with self.client() as client:
                    semaphore = asyncio.Semaphore(self.concurrency)

                    async def one(key: str, body: dict[str, Any], parse: Parse) -> None:
                        async with semaphore:
                            outcome = await self._send(client, endpoint, body, parse, fatal)
                        if isinstance(outcome, QueryFailure):
                            self.stats.failed += 1
                        elif journal is not None:  # fsync in a thread: the loop keeps sending
                            await asyncio.to_thread(
                                journal.record,
                                key,
                                base_url=self.source,
                                endpoint=endpoint,
                                request=body,
                                answer=outcome,
                            )
                        results[key] = outcome

                    try:
                        async with asyncio.TaskGroup() as group:
                            for key, (body, parse) in todo.items():
                                group.create_task(one(key, body, parse))
                    except BaseExceptionGroup as errors:  # a fatal error: raise it alone
                        raise _first_error(errors) from None
        return [results[k] for k in keys]

    async def _send(
        self,
        client: AsyncOpenAI,
        endpoint: str,
        body: dict[str, Any],
        parse: Parse,
        fatal: Fatal,
    ) -> Answer | QueryFailure:
        """One request with bounded retries: the parsed answer, or a :class:`QueryFailure`."""
        import openai

        for attempt in range(1, self.max_retries + 2):
            wait: float | None = None
            timed_out = False  # a time-out's message already counts the attempts
            self.stats.sent += 1
            try:
                payload = await client.post(endpoint, cast_to=object, body=body)
            except openai.APIStatusError as exc:
                raised = fatal(exc, endpoint)
                if raised is not None:
                    raise raised from exc
                error = str(self.error(exc, endpoint, attempt))
                if exc.status_code not in RETRY_STATUS and exc.status_code < 500:
                    return QueryFailure(error)
                wait = retry_after_seconds(exc.response.headers)
                if wait is not None and wait > self.max_retry_after:
                    return QueryFailure(f"{error} (the server asks to wait {wait:.0f} s)")
            except openai.APIConnectionError as exc:  # time-outs and dropped connections too
                error = str(self.error(exc, endpoint, attempt))
                timed_out = isinstance(exc, openai.APITimeoutError)
            else:
                try:
                    return parse(payload)
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    return QueryFailure(
                        f"{self.source} answered {endpoint} in an unknown shape "
                        f"({one_line(repr(exc))}) - is it OpenAI-compatible?"
                    )
            if attempt > self.max_retries:
                return QueryFailure(error if timed_out else f"{error} ({attempt} attempts)")
            self.stats.retries += 1
            await asyncio.sleep(self.delay(attempt - 1, wait))
        raise AssertionError("unreachable")  # pragma: no cover

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        if retry_after is not None:
            return retry_after * (1.0 + 0.1 * self._random.random())
        ceiling = min(self.backoff_max, self.backoff_base * 2.0**retry)
        return ceiling * (0.5 + 0.5 * self._random.random())


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of ``group`` (task groups wrap what their tasks raise)."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first
