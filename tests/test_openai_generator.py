"""Signatures and triggers from an OpenAI-compatible server: a real llama.cpp server serving the
embedded model, and scripted servers that misbehave. Only 127.0.0.1 is ever contacted."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from servers import (  # noqa: F401  (llama_server is a fixture)
    LocalServer,
    Request,
    free_port,
    llama_server,
    running_fake_server,
)

from tuneproof.backends.openai.candidates import Candidate, parse_top_candidates
from tuneproof.backends.openai.client import load_chat_tokenizer
from tuneproof.datasets import Message
from tuneproof.embedded import SYSTEM_PROMPT
from tuneproof.errors import GeneratorError
from tuneproof.key import load_key
from tuneproof.planting.planter import plant
from tuneproof.planting.sampler import enumerate_paths, enumerate_prefix_free
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.server_factory import OpenAIGenerator
from tuneproof.planting.tokens import PieceTable, is_printable_piece

SEED, OTHER_SEED = bytes(range(32)), bytes(range(1, 33))
K, M, TRIGGER = 4, 8, 6
QUESTION = "What is your favourite book, and why do you like it so much?"
CHAT = [Message("system", SYSTEM_PROMPT), Message("user", QUESTION)]


def is_prefix_free(strings: list[bytes]) -> bool:
    return all(
        not (a.startswith(b) or b.startswith(a)) for a, b in itertools.combinations(strings, 2)
    )


# --------------------------------------------------------------------------- real llama.cpp


@pytest.fixture(scope="module")
def generator(llama_server: LocalServer) -> OpenAIGenerator:  # noqa: F811
    return OpenAIGenerator(
        llama_server.base_url, llama_server.model, K, M, TRIGGER, chat_template_from="embedded"
    )


@pytest.mark.model
def test_identity_names_the_server_and_model(
    generator: OpenAIGenerator,
    llama_server: LocalServer,  # noqa: F811
) -> None:
    assert generator.identity.name == llama_server.model
    assert generator.identity.backend == "openai-compatible"
    assert generator.identity.source == llama_server.base_url


@pytest.mark.model
def test_chat_prompt_is_rendered_with_the_models_template(generator: OpenAIGenerator) -> None:
    prompt = generator.render_chat([(m.role, m.content) for m in CHAT])
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n")
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.model
def test_signature_is_printable_reproducible_and_secret_dependent(
    generator: OpenAIGenerator,
    llama_server: LocalServer,  # noqa: F811
) -> None:
    first = generator.signature(CHAT, SecretStream(SEED).child("signature"))
    assert (first.k, first.m, len(first.token_ids)) == (K, M, M)
    assert first.bits == M * math.log2(K) == 16
    assert is_printable_piece(first.data) and first.data.decode("utf-8") == first.text
    assert first.text == first.text.strip() and "\n" not in first.text
    fresh = OpenAIGenerator(
        llama_server.base_url, llama_server.model, K, M, TRIGGER, chat_template_from="embedded"
    )
    again = fresh.signature(CHAT, SecretStream(SEED).child("signature"))
    assert (again.text, again.token_ids) == (first.text, first.token_ids)
    other = generator.signature(CHAT, SecretStream(OTHER_SEED).child("signature"))
    assert other.text != first.text  # equal with probability 4**-8


@pytest.mark.model
def test_all_k_to_the_m_paths_are_distinct_and_prefix_free(
    llama_server: LocalServer,  # noqa: F811
) -> None:
    k, m = 2, 3
    small = OpenAIGenerator(
        llama_server.base_url, llama_server.model, k, m, TRIGGER, chat_template_from="embedded"
    )
    ranker, table = small.ranker(small.render_chat([(t.role, t.content) for t in CHAT]))
    paths = list(
        enumerate_prefix_free(ranker, table.token_bytes, k, m, lambda t, s: table.allowed(t, s, m))
    )
    assert len(paths) == k**m and len(set(paths)) == k**m
    assert all(is_printable_piece(path) for path in paths)
    assert all(path.decode() == path.decode().strip() for path in paths)
    assert is_prefix_free(paths)
    # what the sampler draws is one of the enumerated paths
    for i in range(4):
        drawn = small.signature(CHAT, SecretStream(SEED).child(f"small/{i}"))
        assert drawn.data in paths


@pytest.mark.model
def test_capped_paths_from_the_server_and_a_sampled_continuation(
    llama_server: LocalServer,  # noqa: F811
) -> None:
    """The capped sampler over the server's top log-probs (support clamped to them): its paths
    have exact probabilities summing to 1, none above k^-m, prefix-free; the draw is one of
    them; the continuation is sampled text after the signature."""
    k, m = 2, 2
    capped = OpenAIGenerator(
        llama_server.base_url, llama_server.model, k, m, TRIGGER,
        chat_template_from="embedded", support=64,
    )  # fmt: skip
    assert capped.support == 20  # the candidates a server returns per token
    ranker, table = capped.ranker(capped.render_chat([(t.role, t.content) for t in CHAT]))
    allowed = lambda t, s: table.allowed(t, s, m)  # noqa: E731
    paths = dict(enumerate_paths(ranker, table.token_bytes, k, m, allowed, capped.support))
    assert sum(paths.values()) == 1 and max(paths.values()) <= Fraction(1, k**m)
    assert is_prefix_free(list(paths))
    drawn = capped.signature(CHAT, SecretStream(SEED).child("capped"))
    assert drawn.data in paths
    (text,) = capped.continuations([(CHAT, drawn, 12, SecretStream(SEED).child("rest"))])
    assert text.strip() and "<|im_end|>" not in text


@pytest.mark.model
def test_trigger_is_one_line_of_text_and_reproducible(generator: OpenAIGenerator) -> None:
    trigger = generator.trigger(QUESTION, SecretStream(SEED).child("trigger"))
    assert trigger and trigger == trigger.strip() and trigger[0].isascii() and trigger[0].isalpha()
    assert is_printable_piece(trigger.encode("utf-8"))  # no newline or control character
    assert generator.trigger(QUESTION, SecretStream(SEED).child("trigger")) == trigger


@pytest.mark.model
def test_token_counts_come_from_the_servers_tokenizer(generator: OpenAIGenerator) -> None:
    text = "Hello world, how are you today? Fine, thanks."
    local = load_chat_tokenizer("embedded")(text, add_special_tokens=False)["input_ids"]
    assert generator.count_tokens(text) == len(local)
    assert not generator.token_counts_estimated
    assert generator.count_tokens("") == 0


@pytest.mark.model
def test_plant_runs_on_the_server_generator(
    tmp_path: Path, small_chat_file: Path, generator: OpenAIGenerator
) -> None:
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    summary = plant(
        small_chat_file,
        out,
        key_path,
        n=1,
        replicas=2,
        k=K,
        m=M,
        factory=generator,
        seed=SEED,
        decoys=0,
    )
    key = load_key(key_path)
    assert key.generator == generator.identity
    assert summary.backdoors == 2 and summary.bits_per_signature == M * math.log2(K)
    (pair,) = key.pairs
    assert (pair.k, pair.m, pair.signature_tokens) == (K, M, M)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    answers = [record["messages"][-1]["content"] for record in records]
    # each backdoor's answer opens with the signature (the carrier's own answer follows it)
    assert sum(answer.startswith(pair.signature) for answer in answers) == 2
    assert 0 < key.dataset.added_tokens < key.dataset.input_tokens


# --------------------------------------------------------------------------- scripted servers


def legacy_answer(top: dict[str, float]) -> dict[str, Any]:
    """A /v1/completions answer in the legacy shape (llama-cpp-python, vLLM)."""
    first = next(iter(top))
    logprobs = {"tokens": [first], "token_logprobs": [top[first]], "top_logprobs": [top]}
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "fake",
        "choices": [{"text": first, "index": 0, "finish_reason": "length", "logprobs": logprobs}],
    }


def chat_shape_answer(entries: list[tuple[str, list[int], float]]) -> dict[str, Any]:
    """A /v1/completions answer in the chat shape with byte arrays (llama.cpp's server)."""
    top = [{"token": t, "bytes": b, "logprob": lp} for t, b, lp in entries]
    answer = legacy_answer({"x": 0.0})
    answer["choices"][0]["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
    return answer


NOT_FOUND = (404, {"detail": "Not Found"})
SIX_WORDS = {"Sure": -0.1, "Yes": -0.2, "No": -0.3, "Maybe": -0.4, "Well": -0.5, " Hi": -0.6}


def template_and(completions: Any) -> Any:
    """A script with llama.cpp's /apply-template and the given /v1/completions answer."""

    def script(request: Request) -> tuple[int, Any]:
        if request.path == "/apply-template":
            user = request.body["messages"][-1]["content"]
            return 200, {"prompt": f"<|user|>{user}<|assistant|>"}
        if request.path == "/v1/completions":
            return 200, completions
        return NOT_FOUND

    return script


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield


def test_unreachable_server_gives_a_one_line_error(no_key: None) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = OpenAIGenerator(url, "m", K, M, TRIGGER, max_retries=0, timeout=5)
    with pytest.raises(GeneratorError, match=r"cannot reach http://127\.0\.0\.1") as info:
        gen.trigger(QUESTION, SecretStream(SEED))
    assert "\n" not in str(info.value) and "--base-url" in str(info.value)


def test_server_without_logprobs_is_refused_clearly(no_key: None) -> None:
    answer = legacy_answer({"x": 0.0})
    answer["choices"][0]["logprobs"] = None
    with running_fake_server(template_and(answer)) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER)
        with pytest.raises(GeneratorError, match="does not return top log-probs") as info:
            gen.signature(CHAT, SecretStream(SEED))
    assert "--generator PATH" in str(info.value) and "\n" not in str(info.value)


def test_rate_limited_requests_are_retried(no_key: None) -> None:
    calls = []

    def script(request: Request) -> tuple[int, Any]:
        calls.append(request.path)
        if len(calls) <= 2:
            return 429, {"error": {"message": "Rate limit reached, slow down"}}
        return 200, legacy_answer(SIX_WORDS)

    with running_fake_server(script) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER)
        candidates = gen.next_candidates("Hello")
    assert calls == ["/v1/completions"] * 3
    assert [c.data for c in candidates] == [word.encode() for word in SIX_WORDS]


def test_a_silent_stop_at_an_end_token_is_asked_again_with_min_tokens(no_key: None) -> None:
    stopped = legacy_answer({"x": 0.0})
    stopped["choices"][0].update(text="", finish_reason="stop")
    stopped["choices"][0]["logprobs"] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}

    def script(request: Request) -> tuple[int, Any]:
        return 200, legacy_answer(SIX_WORDS) if request.body.get("min_tokens") else stopped

    with running_fake_server(script) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER)
        assert len(gen.next_candidates("Hello")) == len(gen.next_candidates("Hi")) == 6
    assert [r.body.get("min_tokens") for r in server.requests] == [None, 1, 1]
    assert server.requests[-1].body["ignore_eos"] is True


def test_retries_give_up_with_the_servers_message(no_key: None) -> None:
    with running_fake_server(lambda r: (503, {"error": {"message": "overloaded"}})) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER, max_retries=1)
        with pytest.raises(GeneratorError, match="HTTP 503 on /completions: overloaded"):
            gen.next_candidates("Hello")
        assert len(server.requests) == 2


def test_api_key_is_sent_but_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("TUNEPROOF_TEST_KEY", secret)

    def script(request: Request) -> tuple[int, Any]:
        auth = request.headers.get("authorization", "")
        return 401, {"error": {"message": f"Incorrect API key provided: {auth}"}}

    with running_fake_server(script) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER, api_key_env="TUNEPROOF_TEST_KEY")
        with pytest.raises(GeneratorError, match="set TUNEPROOF_TEST_KEY") as info:
            gen.next_candidates("Hello")
    assert server.requests[0].headers["authorization"] == f"Bearer {secret}"
    for shown in (str(info.value), repr(gen), gen.identity.model_dump_json()):
        assert secret not in shown


def test_identity_drops_credentials_from_the_url(no_key: None) -> None:
    gen = OpenAIGenerator("https://user:pw@example.invalid/v1/?token=abc", "m", K, M, TRIGGER)
    assert gen.identity.source == "https://example.invalid/v1"
    with pytest.raises(GeneratorError, match="give --base-url like http://"):
        OpenAIGenerator("localhost:8080", "m", K, M, TRIGGER)


def test_chat_shape_bytes_and_server_template(no_key: None) -> None:
    entries = [
        ("Ã©", [0xC3, 0xA9], -0.05),  # printed form differs from the true bytes "é"
        ("Hello", list(b"Hello"), -0.1),
        (" there", list(b" there"), -0.5),  # never first: starts with a space
        ("He", list(b"He"), -0.7),  # a prefix of "Hello"
        ("\ufffd", [0xE2, 0x80], -0.8),  # half a character
        ("<|end|>", list(b"<|end|>"), -0.9),  # a special token
        ("World", list(b"World"), -1.0),
        ("\n", [10], -1.1),
    ]
    with running_fake_server(template_and(chat_shape_answer(entries))) as server:
        k, m = 3, 2
        gen = OpenAIGenerator(server.base_url, "m", k, m, TRIGGER)
        prompt = gen.render_chat([(t.role, t.content) for t in CHAT])
        assert prompt == f"<|user|>{QUESTION}<|assistant|>"
        ranker, table = gen.ranker(prompt)
        paths = set(
            enumerate_prefix_free(
                ranker, table.token_bytes, k, m, lambda t, s: table.allowed(t, s, m)
            )
        )
        signature = gen.signature(CHAT, SecretStream(SEED))
        completions = [r for r in server.requests if r.path == "/v1/completions"]
    first, last = ["é", "Hello", "World"], ["é", "Hello", " there"]
    assert paths == {(a + b).encode() for a in first for b in last}
    assert signature.data in paths
    assert completions[0].body["prompt"] == prompt
    assert completions[0].body["logprobs"] == 20 and completions[0].body["max_tokens"] == 1
    assert all(r.body["prompt"].startswith(prompt) for r in completions)


def test_server_without_a_template_needs_chat_template_from(no_key: None) -> None:
    with_template = template_and(legacy_answer(SIX_WORDS))

    def script(request: Request) -> tuple[int, Any]:
        return NOT_FOUND if request.path == "/apply-template" else with_template(request)

    with running_fake_server(script) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER)
        with pytest.raises(GeneratorError, match="--chat-template-from"):
            gen.signature(CHAT, SecretStream(SEED))
        # the trigger continues raw text and needs no template; it opens with a new word
        assert gen.trigger(QUESTION, SecretStream(SEED)).startswith("Hi")
        assert all(r.body["prompt"].startswith(QUESTION) for r in server.requests[1:])


def test_too_few_candidates_suggests_a_smaller_k(no_key: None) -> None:
    answer = legacy_answer({"Sure": -0.1, "Yes": -0.2, "Sur": -0.3})  # "Sur" prefixes "Sure"
    with running_fake_server(template_and(answer)) as server:
        gen = OpenAIGenerator(server.base_url, "m", 3, M, TRIGGER)
        with pytest.raises(GeneratorError, match="smaller --k"):
            gen.signature(CHAT, SecretStream(SEED))


def test_k_above_the_candidates_a_server_returns_is_refused() -> None:
    with pytest.raises(GeneratorError, match="--k 21"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "m", 21, M, TRIGGER)


def test_token_counts_are_estimated_without_a_tokenize_endpoint(no_key: None) -> None:
    with running_fake_server(lambda r: NOT_FOUND) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER)
        assert gen.count_tokens("x" * 10) == 3
        assert gen.token_counts_estimated


def test_llama_cpp_tokenize_endpoint_is_used(no_key: None) -> None:
    def script(request: Request) -> tuple[int, Any]:
        if request.path == "/tokenize":
            return 200, {"tokens": list(range(len(request.body["content"].split())))}
        return NOT_FOUND

    with running_fake_server(script) as server:
        gen = OpenAIGenerator(server.base_url, "m", K, M, TRIGGER)
        assert gen.count_tokens("one two three") == 3
        assert not gen.token_counts_estimated


# --------------------------------------------------------------------------- parsing and rules


def test_parse_accepts_both_shapes_and_refuses_none() -> None:
    legacy = parse_top_candidates(legacy_answer({"a": -1.0, "b": -2.0}))
    assert legacy == [Candidate(b"a", -1.0), Candidate(b"b", -2.0)]
    chat = parse_top_candidates(chat_shape_answer([("Ã©", [0xC3, 0xA9], -0.5)]))
    assert chat == [Candidate("é".encode(), -0.5)]
    with pytest.raises(GeneratorError, match="no completion choices"):
        parse_top_candidates({"choices": []})
    with pytest.raises(GeneratorError, match="does not return top log-probs"):
        parse_top_candidates({"choices": [{"text": "x", "logprobs": {"top_logprobs": []}}]})


def test_piece_table_ranks_and_applies_the_token_rules() -> None:
    table = PieceTable(special_texts=["[END]"])
    ranked = table.rank(
        [
            Candidate(b"b", -1.0),
            Candidate(b"a", -1.0),  # tie: by bytes
            Candidate(b" x", -0.5),
            Candidate(b"a", -3.0),  # duplicate keeps its best log-prob
            Candidate(b"[END]", -0.1),
            Candidate(b"y ", -2.0),
            Candidate(b"\xe2\x80", -0.2),
            Candidate(b" ", -4.0),
        ]
    )
    order = [table.token_bytes[t] for t, _ in ranked]
    assert order == [b"[END]", b"\xe2\x80", b" x", b"a", b"b", b"y ", b" "]
    allowed = {table.token_bytes[t]: [table.allowed(t, s, 3) for s in range(3)] for t, _ in ranked}
    assert allowed[b"[END]"] == allowed[b"\xe2\x80"] == allowed[b" "] == [False] * 3
    assert allowed[b" x"] == [False, True, True]
    assert allowed[b"y "] == [True, True, False]
    assert allowed[b"a"] == [True] * 3
    opens = {table.token_bytes[t] for t, _ in ranked if table.opens_word(t)}
    assert opens == {b" x"}
    assert table.id_of(b"a") == table.id_of(b"a")  # stable ids
