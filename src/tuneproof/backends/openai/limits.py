"""Every HTTP answer the ``openai`` SDK reads for tuneproof: within a deadline and a size cap.

httpx's time-outs are per operation (connect, each read of the socket), so a server that sends
one byte a second never trips them, and nothing bounds how much a server sends (a 150 MB answer
to a ``max_tokens=40`` request is read whole). The SDK's HTTP clients built here
(:class:`GuardedAsyncClient` for verification, :class:`GuardedClient` for the generator at plant
time) give each attempt - one ``send``: connect, request, headers, redirects, body - one
:class:`Attempt`, the single mechanism both share:

- **deadline**: the whole answer must arrive within ``seconds`` (the runner's ``timeout``).
  Past it the attempt raises ``httpx2.ReadTimeout``, which the SDK retries like any time-out
  (``openai._base_client``: ``timeout_exceptions()`` are retried up to ``max_retries``); the
  final failure reads "did not answer in full within N s";
- **size**: a ``Content-Length`` above ``max_bytes`` is refused before the body is read, and a
  body that grows past it is cut off there, with :class:`~tuneproof.backends.openai.client.
  ResponseRefused`. The SDK passes on exceptions that are neither time-outs nor connection
  errors without retrying them, so such a request fails after one attempt (a server that sent
  150 MB once will do it again). Answers are asked for uncompressed (``Accept-Encoding:
  identity``) and a compressed one is refused too: a few MB of gzip can inflate to gigabytes.

The async client runs the headers under ``asyncio.timeout`` and each body chunk within what is
left, so a trickle is cut at the deadline. The sync client can check only between body chunks:
an attempt ends at most one read time-out past its deadline, and headers trickled byte by byte
are bounded only by httpcore's per-read time-out and its 100 kB header limit.

Overriding ``send`` (not wrapping the transport) keeps the client's proxies from the environment.
Both clients verify certificates with one :func:`ssl_context` per process (the default one httpx
builds, honouring ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``): building it loads the CA bundle, about
20 ms, once rather than for every batch of requests.
This module imports the SDK: import it only once :func:`~tuneproof.backends.openai.client.
sdk_clients` has checked that it is installed.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
from openai import DefaultAsyncHttpxClient, DefaultHttpxClient

from tuneproof.backends.openai.client import MAX_RESPONSE_BYTES, ResponseRefused, public_url

MIB = 2**20


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The TLS context every client of this module verifies servers with: httpx's default
    (certificates and host names checked against ``SSL_CERT_FILE``, ``SSL_CERT_DIR`` or the
    system's CA store), built once."""
    return httpx2.create_ssl_context(verify=True, trust_env=True)


def _size(n: int) -> str:
    """A byte count as people read it: "32 MiB", or "1,000 bytes"."""
    return f"{n // MIB} MiB" if n % MIB == 0 else f"{n:,} bytes"


class Attempt:
    """One attempt's deadline and byte budget (see the module docstring)."""

    def __init__(self, request: httpx2.Request, seconds: float, max_bytes: int) -> None:
        self.request, self.seconds, self.max_bytes = request, seconds, max_bytes
        self.deadline = time.monotonic() + seconds
        self.received = 0
        request.headers["accept-encoding"] = "identity"

    def left(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def timed_out(self) -> httpx2.ReadTimeout:
        return httpx2.ReadTimeout(
            f"no complete answer within {self.seconds:g} s", request=self.request
        )

    def refused(self, what: str) -> ResponseRefused:
        return ResponseRefused(
            f"{public_url(str(self.request.url))} {what}; check that --base-url is an "
            "OpenAI-compatible server"
        )

    def check_headers(self, response: httpx2.Response) -> None:
        """Refuse a compressed answer, or one declared larger than the cap."""
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise self.refused(
                f"sent a compressed answer (Content-Encoding: {encoding}) though none was asked"
                " for - refused, as its size cannot be capped"
            )
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self.refused(
                f"declared an answer of {int(declared):,} bytes, over the "
                f"{_size(self.max_bytes)} cap - refused unread"
            )

    def take(self, chunk: bytes) -> bytes:
        """``chunk``, once it is counted and checked against the cap and the deadline."""
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise self.refused(
                f"sent more than the {_size(self.max_bytes)} cap on an answer - cut off there"
            )
        if self.left() < 0:
            raise self.timed_out()
        return chunk


class _AsyncBody(httpx2.AsyncByteStream):
    """A response body read chunk by chunk within its attempt's deadline and cap."""

    def __init__(self, stream: httpx2.AsyncByteStream, attempt: Attempt) -> None:
        self._stream, self._attempt = stream, attempt

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._stream.__aiter__()
        while True:
            timeout = asyncio.timeout(self._attempt.left())
            try:
                async with timeout:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if timeout.expired():
                    raise self._attempt.timed_out() from None
                raise
            yield self._attempt.take(chunk)

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def elapsed(self) -> Any:
        return getattr(self._stream, "elapsed", None)


class _SyncBody(httpx2.SyncByteStream):
    """The synchronous twin of :class:`_AsyncBody` (checked between chunks)."""

    def __init__(self, stream: httpx2.SyncByteStream, attempt: Attempt) -> None:
        self._stream, self._attempt = stream, attempt

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            yield self._attempt.take(chunk)

    def close(self) -> None:
        self._stream.close()

    @property
    def elapsed(self) -> Any:
        return getattr(self._stream, "elapsed", None)


class GuardedAsyncClient(DefaultAsyncHttpxClient):
    """The SDK's default async HTTP client, each attempt within ``seconds`` and ``max_bytes``."""

    def __init__(
        self, *, seconds: float, max_bytes: int = MAX_RESPONSE_BYTES, **options: Any
    ) -> None:
        options.setdefault("verify", ssl_context())
        super().__init__(**options)
        self.seconds, self.max_bytes = seconds, max_bytes

    async def send(
        self, request: httpx2.Request, *, stream: bool = False, **options: Any
    ) -> httpx2.Response:
        attempt = Attempt(request, self.seconds, self.max_bytes)
        timeout = asyncio.timeout(attempt.left())
        try:
            async with timeout:
                response = await super().send(request, stream=True, **options)
        except TimeoutError:
            if timeout.expired():
                raise attempt.timed_out() from None
            raise
        try:
            attempt.check_headers(response)
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _AsyncBody(response.stream, attempt)
            if not stream:
                await response.aread()
        except BaseException:
            await response.aclose()
            raise
        return response


class GuardedClient(DefaultHttpxClient):
    """The SDK's default sync HTTP client, each attempt within ``seconds`` and ``max_bytes``."""

    def __init__(
        self, *, seconds: float, max_bytes: int = MAX_RESPONSE_BYTES, **options: Any
    ) -> None:
        options.setdefault("verify", ssl_context())
        super().__init__(**options)
        self.seconds, self.max_bytes = seconds, max_bytes

    def send(
        self, request: httpx2.Request, *, stream: bool = False, **options: Any
    ) -> httpx2.Response:
        attempt = Attempt(request, self.seconds, self.max_bytes)
        response = super().send(request, stream=True, **options)
        try:
            if attempt.left() < 0:
                raise attempt.timed_out()
            attempt.check_headers(response)
            assert isinstance(response.stream, httpx2.SyncByteStream)
            response.stream = _SyncBody(response.stream, attempt)
            if not stream:
                response.read()
        except BaseException:
            response.close()
            raise
        return response
