"""Many requests to an OpenAI-compatible server: concurrency, the SDK's retries, the journal.

:class:`RequestRunner` sends JSON bodies with ``openai.AsyncOpenAI`` on an ``asyncio`` loop, at
most ``concurrency`` at a time. Retries are the SDK's own (``AsyncOpenAI(max_retries=...,
timeout=...)``; see ``_should_retry`` and ``_calculate_retry_timeout`` in ``openai._base_client``):

- every request is tried at most ``max_retries + 1`` times, each attempt within ``timeout``:
  the whole answer (connect, headers, body), not only each read of the socket, and at most
  ``max_response_bytes`` of it (:mod:`tuneproof.backends.openai.limits`; a larger answer fails
  its request at once, unretried, and a trickle counts as a time-out);
- 408, 409, 429, 5xx, time-outs and dropped connections are retried: after the wait the server
  asks for (``retry-after-ms``, or ``Retry-After`` in seconds or as an HTTP date) when it is
  between 0 and 2 minutes, otherwise after an exponential back-off (0.5 s doubling, at most
  8 s, less up to 25% jitter); a server's ``x-should-retry: true/false`` is obeyed;
- a server asking to wait longer than 2 minutes (:data:`MAX_RETRY_AFTER_S`, the SDK's own cap)
  is not waited for: the failure says how long it asked;
- what the SDK is not told: statuses that retrying cannot fix (``client.NEVER_RETRY``: 401, 403, a
  missing endpoint 404, 405, 501) are never retried, and those the caller's ``fatal`` picks are
  raised at once; any other final failure comes back per request as a
  :class:`tuneproof.types.QueryFailure` with a one-line reason.

With a ``deadline`` (seconds from when the runner is made), requests still queued or in flight
when it passes are cancelled (the connection closed, the SDK's back-off cut short) and each comes
back as a :class:`~tuneproof.types.QueryFailure` saying so; later requests are not sent.

A JSON answer that does not parse is a per-request failure too (one attempt: it is parsed after
the SDK's retries). Bodies go out as JSON bytes (:func:`dumps`) and answers come back as the raw
response, read by :func:`read_json`: the same bytes and values as the SDK's own serialisation
and parsing, without its per-request copy of the body and its response objects (``orjson``:
about 20 us less CPU per request, of about 0.9 ms in all, nearly all of it httpx's).

Attempts are counted by an ``httpx`` request hook on the SDK's HTTP client, which sees every
attempt the SDK sends; a context variable set by each request's task attributes them to it
(:attr:`RequestRunner.stats`, and "N attempts" in failures).

With a journal (:mod:`tuneproof.backends.openai.journal`) the answers already there are not asked
again, each new answer is appended as soon as it arrives and counted once it is on disk
(answers arriving together share one fsync, in a worker thread so that the loop keeps sending:
:meth:`~tuneproof.backends.openai.journal.Journal.arecord`), and identical requests of one batch
are sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import json
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from tuneproof.backends.openai.client import (
    MAX_RESPONSE_BYTES,
    ResponseRefused,
    ServerError,
    api_key,
    one_line,
    sdk_clients,
    server_error,
)
from tuneproof.backends.openai.journal import Journal, request_key
from tuneproof.types import QueryFailure

if TYPE_CHECKING:
    import httpx2
    from openai import APIStatusError, AsyncOpenAI

DEFAULT_CONCURRENCY = 16
"""Requests in flight by default: more than a model server has slots (llama.cpp's ``--parallel``,
TGI's batch, 8 in ``benchmarks/http_overhead.py``), which it queues, so that a slot that frees
starts the next request at once while the client reads the answers that just came back; with
exactly as many in flight as slots, every slot waits for the client at every wave of answers
(the "HTTP client overhead" section of docs/benchmarks.md). The per-attempt ``timeout`` counts
the time a request waits in the server's queue: for a server with one slot and 5 s answers, 16
in flight is up to 80 s."""
MAX_RETRY_AFTER_S = 120.0
"""The longest ``Retry-After`` that is waited for: the SDK's ``MAX_RETRY_AFTER_DELAY``."""

T = TypeVar("T")
Answer = dict[str, Any]
Parse = Callable[[Any], Answer]
"""Turns a server's JSON answer into what is returned and journaled; raising KeyError,
IndexError, TypeError or ValueError makes it a :class:`QueryFailure`."""
Fatal = Callable[["APIStatusError", str], "ServerError | None"]
"""(error, endpoint) -> the error to raise at once, or None to record it as a failure."""

_attempts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "tuneproof_openai_attempts", default=None
)
"""The attempt tally of the request the current task sends (None: not counted)."""


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


async def _count_attempt(request: Any) -> None:
    """httpx request hook: one more attempt for the request of the current task."""
    tally = _attempts.get()
    if tally is not None:
        tally[0] += 1


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
        deadline: float | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ServerError(
                f"need concurrency >= 1, max_retries >= 0 and timeout > 0 "
                f"(got {concurrency}, {max_retries} and {timeout})"
            )
        if (deadline is not None and not deadline > 0) or max_response_bytes < 1:
            raise ServerError(
                f"need a deadline > 0 s and max_response_bytes >= 1 "
                f"(got {deadline} and {max_response_bytes})"
            )
        self.base_url, self.source, self.model = base_url, source, model
        self.api_key_env = api_key_env
        self.concurrency, self.timeout, self.max_retries = concurrency, timeout, max_retries
        self.journal = journal
        self.deadline, self.max_response_bytes = deadline, max_response_bytes
        self._deadline_at = None if deadline is None else time.monotonic() + deadline
        self.stats = RequestStats()

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (<= 0 once it passed), or None without one."""
        return None if self._deadline_at is None else self._deadline_at - time.monotonic()

    def deadline_passed(self) -> bool:
        left = self.seconds_left()
        return left is not None and left <= 0

    def late(self) -> str:
        """Why a request cut by the deadline got no answer (one line, what to do next)."""
        resume = " and the same --journal to resume" if self.journal else ""
        return (
            f"the deadline of {self.deadline:g} s passed before {self.source} answered - "
            f"run again with a later --deadline{resume}"
        )

    async def by_deadline(self, work: Coroutine[Any, Any, T], late: Callable[[], T]) -> T:
        """``work``'s result, or ``late()`` when the deadline passes first (``work`` is then
        cancelled, or never started once it has passed)."""
        left = self.seconds_left()
        if left is None:
            return await work
        if left <= 0:
            work.close()
            return late()
        timeout = asyncio.timeout(left)
        try:
            async with timeout:
                return await work
        except TimeoutError:
            if not timeout.expired():
                raise
            return late()

    def client(self) -> AsyncOpenAI:
        """A new SDK client (one per event loop) with the SDK's retries and time-out, whose
        HTTP client counts every attempt (see the module docstring)."""
        sdk = sdk_clients()[1]  # first: a clear error without the SDK
        from tuneproof.backends.openai.limits import GuardedAsyncClient

        http = GuardedAsyncClient(
            seconds=self.timeout,
            max_bytes=self.max_response_bytes,
            event_hooks={"request": [_count_attempt]},
        )
        return sdk(
            base_url=self.base_url,
            api_key=api_key(self.api_key_env),
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http,
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
        self,
        endpoint: str,
        requests: Sequence[tuple[dict[str, Any], Parse]],
        fatal: Fatal,
        *,
        record: bool = True,
    ) -> list[Answer | QueryFailure]:
        """Answer every (body, parse) request posted to ``endpoint``, in input order; through
        the journal unless ``record`` is False."""
        keys = [request_key(self.source, endpoint, body) for body, _ in requests]
        results: dict[str, Answer | QueryFailure] = {}
        with contextlib.ExitStack() as stack:
            path = self.journal if record else None
            journal = stack.enter_context(Journal(path)) if path else None
            if journal is not None:
                results.update((k, journal.answers[k]) for k in keys if k in journal)
            todo = {k: r for k, r in zip(keys, requests, strict=True) if k not in results}
            self.stats.reused += len(keys) - len(todo)
            if todo:
                async with self.client() as client:
                    semaphore = asyncio.Semaphore(self.concurrency)

                    async def queued(body: dict[str, Any], parse: Parse) -> Answer | QueryFailure:
                        async with semaphore:
                            return await self._send(client, endpoint, body, parse, fatal)

                    def late() -> QueryFailure:
                        return QueryFailure(self.late())

                    async def one(key: str, body: dict[str, Any], parse: Parse) -> None:
                        outcome = await self.by_deadline(queued(body, parse), late)
                        if isinstance(outcome, QueryFailure):
                            self.stats.failed += 1
                        elif journal is not None:  # durable before it counts (group commit)
                            await journal.arecord(
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
        """One request, retried by the SDK: the parsed answer, or a :class:`QueryFailure`."""
        import httpx2
        import openai

        tally = [0]
        _attempts.set(tally)  # this task's own context: the hook counts into ``tally``
        try:
            # the body as JSON bytes and the answer as the raw response: the SDK's retries and
            # errors, without its per-request copies of the body and response objects
            response = await client.post(endpoint, cast_to=httpx2.Response, content=dumps(body))
            payload = read_json(response)
        except openai.APIStatusError as exc:
            raised = fatal(exc, endpoint)
            if raised is not None:
                raise raised from exc
            wait = retry_after_seconds(exc.response.headers)
            if wait is not None and wait > MAX_RETRY_AFTER_S:
                note = f" (the server asks to wait {wait:.0f} s)"
            else:
                note = f" ({tally[0]} attempts)" if tally[0] > 1 else ""
            return QueryFailure(f"{self.error(exc, endpoint)}{note}")
        except openai.APIConnectionError as exc:  # time-outs and dropped connections too
            error = str(self.error(exc, endpoint, max(1, tally[0])))
            if isinstance(exc, openai.APITimeoutError) or tally[0] <= 1:
                return QueryFailure(error)  # a time-out's message already counts the attempts
            return QueryFailure(f"{error} ({tally[0]} attempts)")
        except ResponseRefused as exc:  # too large or compressed: never retried
            return QueryFailure(str(exc))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # declared JSON, is not
            return QueryFailure(
                f"{self.source} answered {endpoint} with malformed JSON "
                f"({one_line(str(exc), 80)}) - is it OpenAI-compatible?"
            )
        finally:
            self.stats.sent += tally[0]
            self.stats.retries += max(0, tally[0] - 1)
        try:
            return parse(payload)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return QueryFailure(
                f"{self.source} answered {endpoint} in an unknown shape "
                f"({one_line(repr(exc))}) - is it OpenAI-compatible?"
            )


def dumps(body: Any) -> bytes:
    """``body`` as the JSON bytes sent: compact UTF-8, as the SDK itself writes it."""
    return orjson.dumps(body)


def read_json(response: httpx2.Response) -> Any:
    """An answer's JSON as the SDK reads it for ``cast_to=object``, only faster: ``orjson``
    first, the standard library for what ``orjson`` refuses but it reads (``NaN``, lone
    surrogates, huge integers, UTF-16), and the text of an answer not declared JSON. Raises
    :class:`json.JSONDecodeError` or :class:`UnicodeDecodeError` when it does not parse."""
    content_type = response.headers.get("content-type", "*").split(";")[0]
    if not content_type.endswith("json"):
        return response.text
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return json.loads(response.content)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of ``group`` (task groups wrap what their tasks raise)."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first
