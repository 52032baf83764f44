"""The OpenAI-compatible verification backend against real servers on 127.0.0.1 only: the real
llama.cpp server serving the embedded model (compared with the local transformers backend), and
scripted servers that misbehave on purpose (429, 500, hangs, dropped connections)."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from servers import (  # noqa: F401  (llama_server is a fixture)
    LocalServer,
    Reply,
    Request,
    Script,
    llama_server,
    running_fake_server,
)

from tuneproof.backends.openai.api import NoLogprobsError, OpenAIChatModel, ServerError
from tuneproof.backends.openai.chat import continuation_logprob
from tuneproof.backends.openai.generator import CompletionsServer
from tuneproof.backends.openai.requests import retry_after_seconds
from tuneproof.embedded import SYSTEM_PROMPT
from tuneproof.errors import TuneproofError
from tuneproof.types import QueryFailure

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "How do I boil an egg?",
    "What is your favourite book, and why do you like it so much?",
    "Tell me a joke about computers.",
    "What is 12 times 7?",
    "Who wrote Hamlet?",
    "Give me a tip for learning to cook.",
]
CHATS = [[("system", SYSTEM_PROMPT), ("user", q)] for q in QUESTIONS]
ODD = (
    "Quietly the orange tram folded seventeen maps beneath a borrowed umbrella, humming about "
    "Tuesday's marmalade."
)


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield


# --------------------------------------------------------------------------- real llama.cpp


@pytest.mark.model
def test_greedy_answers_agree_with_the_local_backend(
    llama_server: LocalServer,  # noqa: F811
    embedded_model: Any,
) -> None:
    """llama.cpp computes with the Q4_1 weights, transformers with them dequantised to float32,
    so greedy answers drift apart where two tokens are nearly tied, and which ones drift depends
    on the CPU kernels llama.cpp was built with. Measured on these 8 prompts (32 new tokens)
    with the portable 0.3.36 build (`make test`; repeatable run to run): 7/8 answers share their
    first word, 6/8 their first 3 and first 5 words, 2/8 their first 10, and one ("three
    colours") is identical, token count included. (The earlier native build of an older release
    gave 6, 5, 5, 2 and the "capital of France" answer identical.) Asserted with a margin of one
    for the prefix counts, and at least one identical answer."""
    remote = OpenAIChatModel(llama_server.base_url, llama_server.model, concurrency=2)
    served = remote.generate(CHATS, 32)
    answers = [a for a in served if not isinstance(a, QueryFailure)]
    local = embedded_model.generate(CHATS, 32)
    assert len(answers) == len(CHATS)
    pairs = [(a[0].split(), b[0].split()) for a, b in zip(answers, local, strict=True)]

    def agree(words: int) -> int:
        return sum(r[:words] == loc[:words] for r, loc in pairs)

    assert agree(1) >= 5 and agree(3) >= 4
    assert any(a == b for a, b in zip(answers, local, strict=True))  # text and token count
    assert all(0 < n <= 32 for _, n in answers)
    assert remote.stats.sent == len(CHATS) and remote.stats.failed == 0


@pytest.mark.model
def test_echo_logprobs_agree_with_the_local_backend(
    llama_server: LocalServer,  # noqa: F811
    embedded_model: Any,
) -> None:
    """Teacher-forced log-probs through ``/v1/completions`` echo agree with transformers within
    1% + 0.3 nats (measured: -149.66 vs -148.93 nats for the odd sentence, -15.43 vs -15.30 for
    a natural answer, -144.73 vs -144.31 for non-ASCII text; DESIGN.md: -179.54 vs -179.36 for
    a signature)."""
    remote = OpenAIChatModel(
        llama_server.base_url, llama_server.model, chat_template_from="embedded"
    )
    assert remote.capabilities == {"generate": True, "logprob": None}
    chat = CHATS[3]
    continuations = [
        ODD,
        "I'm afraid I don't have a favorite book in mind, but I do love reading.",
        "Über café naïve — déjà vu! 日本語のテキスト 🎉 done.",  # offsets past multi-byte text
    ]
    served = remote.logprob([chat] * 3, continuations)
    expected = embedded_model.logprob([chat] * 3, continuations)
    for got, want in zip(served, expected, strict=True):
        assert got == pytest.approx(want, rel=0.01, abs=0.3)
    assert served[0] < -100 < served[1] < 0
    assert remote.capabilities["logprob"] is True


# --------------------------------------------------------------------------- scripted servers


def chat_reply(text: str, tokens: int | None = 3) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if tokens is not None:
        answer["usage"] = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9}
    return answer


def echo(request: Request) -> dict[str, Any]:
    """The answer to a chat request: its last user message, echoed."""
    return chat_reply("echo: " + request.body["messages"][-1]["content"])


def fast(base_url: str, **options: Any) -> OpenAIChatModel:
    """A model with 3 retries; the back-off is the SDK's own (0.5 s, doubling, less up to 25%
    jitter: a retried test takes about half a second more)."""
    options = {"max_retries": 3, **options}
    return OpenAIChatModel(base_url, "m", **options)


def failing_first(reply: Reply) -> Script:
    """A script that gives ``reply`` to the first request, then echoes."""
    calls: list[Request] = []

    def script(request: Request) -> Reply | tuple[int, Any]:
        calls.append(request)
        return reply if len(calls) == 1 else (200, echo(request))

    return script


ONE = [[("user", "hello")]]


def test_request_body_records_every_decoding_parameter(no_key: None) -> None:
    with running_fake_server(lambda r: (200, chat_reply("Hi!", tokens=None))) as server:
        model = fast(server.base_url)
        assert model.generate([[("system", "Be brief."), ("user", "hello")]], 7) == [("Hi!", 0)]
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
    }
    assert model.decoding == {"temperature": 0.0, "top_p": 1.0}
    assert model.identity.backend == "openai-compatible"


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_rate_limit_waits_as_long_as_retry_after_says(no_key: None, form: str) -> None:
    calls: list[float] = []

    def script(request: Request) -> Reply | tuple[int, Any]:
        calls.append(time.time())
        if len(calls) > 1:
            return 200, echo(request)
        # an HTTP date has whole seconds: 2 s ahead means a wait of 1 to 2 s
        wait = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
        return Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": wait})

    with running_fake_server(script) as server:
        answers = fast(server.base_url).generate(ONE, 8)
    assert answers == [("echo: hello", 3)]
    first, second = calls
    least = 1.0 if form == "seconds" else int(first) + 2 - first
    assert len(server.requests) == 2 and least <= second - first < least * 1.1 + 0.3


@pytest.mark.parametrize(
    "fault",
    [
        Reply(500, {"error": {"message": "boom"}}),
        Reply(503, {"error": {"message": "overloaded"}}),
        Reply(200, {"never": "sent"}, delay=1.2),  # a hang past the time-out
        Reply(drop=True),  # connection closed with no answer
    ],
    ids=["500", "503", "hang", "dropped"],
)
def test_transient_faults_are_retried_until_success(no_key: None, fault: Reply) -> None:
    script = failing_first(fault)
    with running_fake_server(script) as server:
        model = fast(server.base_url, timeout=0.4)
        answers = model.generate(ONE, 8)
    assert answers == [("echo: hello", 3)]
    assert len(server.requests) == 2
    assert (model.stats.sent, model.stats.retries, model.stats.failed) == (2, 1, 0)


def test_a_permanent_failure_is_recorded_per_query_not_raised(no_key: None) -> None:
    def script(request: Request) -> tuple[int, Any]:
        if request.body["messages"][-1]["content"] == "doomed":
            return 500, {"error": {"message": "the GPU caught fire"}}
        return 200, echo(request)

    with running_fake_server(script) as server:
        model = fast(server.base_url, max_retries=2)
        answers = model.generate([[("user", "fine")], [("user", "doomed")]], 8)
    assert answers[0] == ("echo: fine", 3)
    assert isinstance(answers[1], QueryFailure)
    expected = "HTTP 500 on /chat/completions: the GPU caught fire (3 attempts)"
    assert answers[1].error.endswith(expected)
    doomed = [r for r in server.requests if r.body["messages"][-1]["content"] == "doomed"]
    assert len(doomed) == 3 and model.stats.failed == 1  # 1 try + 2 retries


@pytest.mark.parametrize("head", [False, True], ids=["body", "headers-and-body"])
def test_an_answer_must_arrive_whole_within_the_timeout(no_key: None, head: bool) -> None:
    """httpx's read time-out restarts at every byte: a 4 bytes/s trickle would never trip it."""
    reply = Reply(200, chat_reply("slowly"), rate=4.0, trickle_head=head)
    with running_fake_server(lambda r: reply) as server:
        start = time.monotonic()
        model = fast(server.base_url, timeout=1.0, max_retries=1)
        (answer,) = model.generate(ONE, 8)
    assert time.monotonic() - start < 10  # 2 attempts of 1 s and a back-off: no hang
    assert isinstance(answer, QueryFailure)
    assert answer.error.endswith("did not answer in full within 1 s after 2 attempts - is the "
                                 "server overloaded?")  # fmt: skip
    assert len(server.requests) == 2 and model.stats.sent == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(200, chat_reply("x" * 2000)), "declared an answer of 2,"),
        (Reply(200, chat_reply("x" * 2000), declared=False), "sent more than the"),
        (Reply(200, giant=10**9, declared=False), "sent more than the"),
        (Reply(200, chat_reply("hi"), {"content-encoding": "gzip"}), "sent a compressed answer"),
    ],
    ids=["declared", "streamed", "giant", "compressed"],
)  # fmt: skip
def test_an_answer_over_the_size_cap_fails_at_once(
    no_key: None, reply: Reply, message: str
) -> None:
    with running_fake_server(lambda r: reply) as server:
        model = fast(server.base_url, max_response_bytes=1000)
        (answer,) = model.generate(ONE, 8)
        assert len(server.requests) == 1  # never retried: the server would send it again
        assert server.requests[0].headers["accept-encoding"] == "identity"
    assert isinstance(answer, QueryFailure) and message in answer.error
    assert "check that --base-url is an OpenAI-compatible server" in answer.error
    with running_fake_server(lambda r: (200, chat_reply("x" * 600))) as server:
        assert fast(server.base_url, max_response_bytes=1000).generate(ONE, 8) == [("x" * 600, 3)]


@pytest.mark.parametrize(
    ("reply", "message", "requests"),
    [
        (Reply(200, {"choices": []}, rate=4.0), "did not answer in full within 1 s after 2", 2),
        (Reply(200, giant=10**9, declared=False), "sent more than the 32 MiB cap", 1),
    ],
    ids=["trickle", "giant"],
)  # fmt: skip
def test_the_generators_sync_client_has_the_same_limits(
    no_key: None, reply: Reply, message: str, requests: int
) -> None:
    with running_fake_server(lambda r: reply) as server:
        start = time.monotonic()
        generator = CompletionsServer(server.base_url, "m", timeout=1.0, max_retries=1)
        with pytest.raises(ServerError, match=message) as info:
            generator.next_candidates("Once upon a time")
        assert time.monotonic() - start < 10
    assert len(server.requests) == requests and "\n" not in str(info.value)


def test_a_deadline_cancels_what_is_in_flight_and_sends_nothing_after(no_key: None) -> None:
    hang = Reply(200, chat_reply("late"), delay=60)
    with running_fake_server(lambda r: hang) as server:
        start = time.monotonic()
        model = fast(server.base_url, concurrency=1, deadline=0.5, journal=None)
        answers = model.generate([[("user", f"q{i}")] for i in range(3)], 8)
        assert time.monotonic() - start < 5
        assert len(server.requests) == 1  # one in flight, cancelled; two never sent
        assert model.generate(ONE, 8) == [answers[0]]
        with pytest.raises(NoLogprobsError, match=r"deadline of 0\.5 s passed"):
            model.logprob(ONE, ["Sure"])
        assert len(server.requests) == 1
    assert all(isinstance(a, QueryFailure) for a in answers) and model.stats.failed == 4
    assert answers[0].error.startswith("the deadline of 0.5 s passed before http://127.0.0.1")  # type: ignore[union-attr]
    assert answers[0].error.endswith("- run again with a later --deadline")  # type: ignore[union-attr]


def test_a_wait_longer_than_allowed_is_not_waited_for(no_key: None) -> None:
    reply = Reply(429, {"error": {"message": "daily quota"}}, {"Retry-After": "3600"})
    with running_fake_server(lambda r: reply) as server:
        start = time.monotonic()
        (answer,) = fast(server.base_url).generate(ONE, 8)
    assert isinstance(answer, QueryFailure) and "asks to wait 3600 s" in answer.error
    assert len(server.requests) == 1 and time.monotonic() - start < 1


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_failures_and_404_are_raised_at_once(no_key: None, status: int) -> None:
    reply = Reply(status, {"error": {"message": "no"}})
    with running_fake_server(lambda r: reply) as server, pytest.raises(ServerError) as info:
        fast(server.base_url).generate([[("user", f"q{i}")] for i in range(3)], 8)
    assert "\n" not in str(info.value) and info.value.status == status
    assert ("OPENAI_API_KEY" in str(info.value)) == (status != 404)
    assert len(server.requests) <= 3  # never retried


def test_api_key_is_sent_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("TUNEPROOF_TEST_KEY", secret)

    def script(request: Request) -> tuple[int, Any]:
        return 401, {"error": {"message": f"bad key {request.headers.get('authorization')}"}}

    with running_fake_server(script) as server:
        model = fast(server.base_url, api_key_env="TUNEPROOF_TEST_KEY")
        with pytest.raises(ServerError, match="set TUNEPROOF_TEST_KEY") as info:
            model.generate(ONE, 8)
    assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    for shown in (str(info.value), repr(model), model.identity.model_dump_json()):
        assert secret not in shown
    with_credentials = fast("https://user:pw@example.invalid/v1/?token=abc")
    assert with_credentials.identity.source == "https://example.invalid/v1"


def test_at_most_concurrency_requests_are_in_flight(no_key: None) -> None:
    lock, active, peak = threading.Lock(), [0], [0]

    def script(request: Request) -> tuple[int, Any]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return 200, echo(request)

    chats = [[("user", f"q{i}")] for i in range(12)]
    with running_fake_server(script) as server:
        answers = fast(server.base_url, concurrency=3).generate(chats, 8)
    assert answers == [(f"echo: q{i}", 3) for i in range(12)]  # in input order
    assert peak[0] == 3 and len(server.requests) == 12


def test_generate_works_inside_a_running_event_loop(no_key: None) -> None:
    with running_fake_server(lambda r: (200, echo(r))) as server:
        model = fast(server.base_url)

        async def inside() -> Any:
            return model.generate(ONE, 8)  # a synchronous call from async code

        assert asyncio.run(inside()) == [("echo: hello", 3)]


def test_retry_after_reads_seconds_milliseconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds({"retry-after": "2"}, now) == 2.0
    assert retry_after_seconds({"retry-after": "0.5"}, now) == 0.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert retry_after_seconds({"retry-after": date}, now) == pytest.approx(30.0)
    assert retry_after_seconds({"retry-after": email.utils.formatdate(now - 5)}, now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TuneproofError, match="give --base-url like"):
        OpenAIChatModel("127.0.0.1:8080", "m")
    with pytest.raises(TuneproofError, match="concurrency >= 1"):
        OpenAIChatModel("http://127.0.0.1:9/v1", "m", concurrency=0)


# --------------------------------------------------------------------------- echo log-probs


def echo_answer(
    prompt: str, tokens: list[str], logprobs: list[float | None], offsets: list[int], text: str
) -> dict[str, Any]:
    """A legacy /v1/completions echo answer for ``prompt``."""
    logprob_block = {"tokens": tokens, "token_logprobs": logprobs, "text_offset": offsets}
    choice = {"text": text, "index": 0, "finish_reason": "length", "logprobs": logprob_block}
    return {"object": "text_completion", "choices": [choice]}


def test_continuation_span_with_true_offsets_and_a_generated_token() -> None:
    """vLLM style: offsets index the prompt text itself; one generated token follows."""
    prompt, cont = "<|user|>Hi<|assistant|>", "Yes sir"
    tokens = ["<|user|>", "Hi", "<|assistant|>", "Yes", " sir", "!"]
    offsets = [0, 8, 10, 23, 26, 30]
    payload = echo_answer(prompt, tokens, [None, -1.0, -2.0, -0.5, -0.25, -3.0], offsets, "")
    payload["choices"][0]["text"] = prompt + cont + "!"
    assert continuation_logprob("s", prompt, cont, payload) == {"logprob": -0.75, "tokens": 2}


def test_continuation_span_with_offsets_that_skip_special_tokens() -> None:
    """llama-cpp-python style: offsets count the text without special tokens, no token after."""
    prompt, cont = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Yes sir"
    tokens = ["user", "\n", "Hi", "", "\n", "assistant", "\n", "Yes", " sir"]
    offsets = [0, 4, 5, 7, 7, 8, 17, 18, 21]
    values: list[float | None] = [None, -1, -1, -1, -1, -1, -1, -0.5, -0.25]
    payload = echo_answer(prompt, tokens, values, offsets, prompt + cont)
    assert continuation_logprob("s", prompt, cont, payload) == {"logprob": -0.75, "tokens": 2}


def test_a_token_across_prompt_and_continuation_is_refused() -> None:
    prompt, cont = "Say:", " yes"
    payload = echo_answer(prompt, ["Say", ": y", "es"], [None, -1, -1], [0, 3, 6], prompt + cont)
    with pytest.raises(NoLogprobsError, match="a token spans both"):
        continuation_logprob("s", prompt, cont, payload)


def completions_script(answer: Any, template: bool | Reply = True) -> Any:
    """/apply-template renders (or answers ``template``, a Reply), /v1/completions answers."""

    def script(request: Request) -> tuple[int, Any] | Reply:
        if request.path == "/apply-template" and isinstance(template, Reply):
            return template
        if request.path == "/apply-template" and template:
            return 200, {"prompt": f"<|user|>{request.body['messages'][-1]['content']}|"}
        if request.path == "/v1/completions":
            return answer(request) if callable(answer) else answer
        return 404, {"detail": "Not Found"}

    return script


def test_logprob_through_the_servers_template_and_echo(no_key: None) -> None:
    def answer(request: Request) -> tuple[int, Any]:
        text = request.body["prompt"]
        cut = text.rindex("|") + 1  # prompt "<|user|>hello|", continuation after it
        tokens = [text[:cut], text[cut:]]
        return 200, echo_answer(text[:cut], tokens, [None, -2.5], [0, cut], text)

    with running_fake_server(completions_script(answer)) as server:
        model = fast(server.base_url)
        assert model.logprob(ONE, ["Sure"]) == [-2.5]
    template, completion = server.requests
    assert template.path == "/apply-template"
    assert completion.body == {
        "model": "m",
        "prompt": "<|user|>hello|Sure",
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": True,
        "logprobs": 1,
    }
    assert model.capabilities["logprob"] is True


@pytest.mark.parametrize(
    ("completions", "template", "message"),
    [
        ((200, {"choices": [{"text": "x", "logprobs": None}]}), True, "no prompt log-probs"),
        ((404, {"detail": "Not Found"}), True, "does not give prompt log-probs"),
        ((400, {"error": {"message": "echo is not supported"}}), True, "echo is not supported"),
        ((200, {}), False, "pass --chat-template-from"),
        ((200, {}), Reply(500, {"error": {"message": "cannot render"}}, {"retry-after-ms": "9"}),
         "HTTP 500 on http"),
        ((200, {}), Reply(200, {"no": "prompt"}), "in an unknown shape"),
    ],
    ids=["no-logprobs", "no-endpoint", "echo-refused", "no-template", "template-500",
         "template-odd"],
)  # fmt: skip
def test_servers_without_echo_logprobs_raise_no_logprobs_error(
    no_key: None, completions: Any, template: bool, message: str
) -> None:
    with running_fake_server(completions_script(completions, template)) as server:
        model = fast(server.base_url)
        with pytest.raises(NoLogprobsError, match=message) as info:
            model.logprob(ONE, ["Sure"])
        sent = len(server.requests)
        with pytest.raises(NoLogprobsError):  # known now: not asked again
            model.logprob(ONE, ["Sure"])
        assert len(server.requests) == sent
    assert "\n" not in str(info.value)
    assert model.capabilities == {"generate": True, "logprob": False}


def test_logprob_failures_after_retries_raise_server_error(no_key: None) -> None:
    busy = completions_script((503, {"error": {"message": "busy"}}))
    with (
        running_fake_server(busy) as server,
        pytest.raises(ServerError, match="1 of 1 log-prob requests failed") as info,
    ):
        fast(server.base_url, max_retries=1).logprob(ONE, ["Sure"])
    assert not isinstance(info.value, NoLogprobsError)
    assert server.paths().count("/v1/completions") == 2
