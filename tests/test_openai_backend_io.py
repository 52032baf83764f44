"""How the OpenAI-compatible backend writes requests and reads answers: the JSON bytes sent,
answers read as the SDK would read them (also what only the standard library parses), one TLS
context that verifies, and the default number of requests in flight."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import httpx2
import pytest
from servers import Reply, Request, running_fake_server

from tuneproof.backends.openai.api import OpenAIChatModel
from tuneproof.backends.openai.limits import GuardedAsyncClient, GuardedClient, ssl_context
from tuneproof.backends.openai.requests import DEFAULT_CONCURRENCY, dumps, read_json

ANSWER = {"choices": [{"message": {"content": "é ok"}, "finish_reason": "stop"}], "usage": {}}


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield


def response(content: bytes, content_type: str = "application/json") -> httpx2.Response:
    return httpx2.Response(200, headers={"content-type": content_type}, content=content)


def test_bodies_are_sent_as_the_sdk_writes_json() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "café 🙂"}], "top_p": 1.0}
    sdk = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert dumps(body) == sdk


def test_answers_read_like_the_standard_library() -> None:
    assert read_json(response(json.dumps(ANSWER).encode())) == ANSWER
    assert read_json(response(b'{"a": 1}', "application/json; charset=utf-8")) == {"a": 1}
    # what orjson refuses: NaN and infinities (Python servers write them), huge integers,
    # lone surrogates, UTF-16
    odd = b'{"logprobs": [NaN, -Infinity, -0.5], "n": 123456789012345678901234567890}'
    parsed = read_json(response(odd))
    assert parsed["logprobs"][1] == float("-inf") and parsed["n"] == 123456789012345678901234567890
    assert read_json(response(b'{"t": "\\ud800"}')) == {"t": "\ud800"}
    assert read_json(response(json.dumps(ANSWER).encode("utf-16"))) == ANSWER


def test_an_answer_not_declared_json_is_its_text_and_bad_json_raises() -> None:
    assert read_json(response(b'{"a": 1}', "text/plain")) == '{"a": 1}'
    with pytest.raises(json.JSONDecodeError):
        read_json(response(b'{"choices": [}'))


def test_a_server_answer_with_non_finite_numbers_is_still_read(no_key: None) -> None:
    raw = b'{"choices": [{"message": {"content": "hi"}}], "usage": {"x": NaN}}'
    with running_fake_server(lambda request: Reply(raw=raw)) as server:
        model = OpenAIChatModel(server.base_url, "m")
        assert model.generate([[("user", "q")]], 8) == [("hi", 0)]


def test_the_server_receives_the_body_and_an_answer_comes_back(no_key: None) -> None:
    seen: list[Request] = []

    def script(request: Request) -> tuple[int, object]:
        seen.append(request)
        return 200, ANSWER

    with running_fake_server(script) as server:
        model = OpenAIChatModel(server.base_url, "m")
        assert model.generate([[("user", "café")]], 8) == [("é ok", 0)]
    assert seen[0].body["messages"] == [{"role": "user", "content": "café"}]
    assert seen[0].headers["content-type"] == "application/json"


def test_one_tls_context_that_verifies_serves_every_client() -> None:
    context = ssl_context()
    assert context is ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # an explicit choice still wins (the SDK's own option)
    custom = ssl.create_default_context()
    clients: list[Any] = [GuardedAsyncClient(seconds=1), GuardedClient(seconds=1)]
    assert all(client._transport._pool._ssl_context is context for client in clients)
    explicit: Any = GuardedClient(seconds=1, verify=custom)
    assert explicit._transport._pool._ssl_context is custom


def test_by_default_more_requests_are_in_flight_than_a_server_has_slots(
    no_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # model servers queue what their slots cannot take (8: the benchmark server's slots)
    monkeypatch.setattr(ThreadingHTTPServer, "request_queue_size", 64)  # listen(5) drops SYNs
    lock, active, peak = threading.Lock(), [0], [0]

    def script(request: Request) -> tuple[int, object]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        return 200, ANSWER

    chats = [[("user", f"q{i}")] for i in range(2 * DEFAULT_CONCURRENCY)]
    with running_fake_server(script) as server:
        answers = OpenAIChatModel(server.base_url, "m").generate(chats, 8)
    assert answers == [("é ok", 0)] * len(chats)
    assert peak[0] == DEFAULT_CONCURRENCY > 8
