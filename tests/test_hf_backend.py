"""The local transformers backend: batching never changes answers or log-probabilities."""

from __future__ import annotations

from typing import Any

import pytest

PROMPTS = [
    [("user", "What is AI?")],
    [("system", "You are terse."), ("user", "Name a colour.")],
    [("user", "Tell me a joke about cats and dogs, please, a long one with a twist.")],
    [("user", "Hi")],
    [("user", "Écris une phrase en français.")],
]
CONTINUATIONS = ["AI is a field.", "Blue.", "A cat walked in", "Hello! 🙂", "Bonjour à tous."]


@pytest.mark.model
def test_batched_generation_equals_one_at_a_time(embedded_model: Any) -> None:
    batched = embedded_model.generate(PROMPTS, 24, batch_size=5)
    single = [embedded_model.generate([chat], 24, batch_size=1)[0] for chat in PROMPTS]
    assert batched == single
    for text, tokens in batched:
        assert 0 < tokens <= 24
        assert "<|im_end|>" not in text and "<|im_start|>" not in text


@pytest.mark.model
def test_batched_logprob_equals_token_by_token_sum(embedded_model: Any) -> None:
    batched = embedded_model.logprob(PROMPTS, CONTINUATIONS, batch_size=5)
    for chat, text, value in zip(PROMPTS, CONTINUATIONS, batched, strict=True):
        prompt = embedded_model.chat_prompt_ids(chat)
        answer = embedded_model.text_ids(text)
        stepwise = sum(
            float(embedded_model.next_token_logprobs(prompt + answer[:i])[token])
            for i, token in enumerate(answer)
        )
        assert value == pytest.approx(stepwise, abs=1e-4)
        assert value < 0


@pytest.mark.model
def test_shared_prompt_scoring_equals_separate_scoring(embedded_model: Any) -> None:
    """Many continuations of one prompt (a signature and its decoys) share the prompt's KV cache;
    the log-probs equal those scored one by one, continuations of any length included."""
    chat = PROMPTS[2]
    shared = embedded_model.logprob([chat] * len(CONTINUATIONS), CONTINUATIONS)
    alone = [embedded_model.logprob([chat], [text])[0] for text in CONTINUATIONS]
    assert shared == pytest.approx(alone, abs=2e-3)
    assert len(set(shared)) == len(CONTINUATIONS)


@pytest.mark.model
def test_many_prompts_with_many_continuations_score_as_one_by_one(embedded_model: Any) -> None:
    """One call with the candidates of several pairs (grouped by prompt, each group on a shared
    KV cache) and lone chats between them, in any order: the scores come back in input order
    and equal each continuation scored alone."""
    chats = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[3], PROMPTS[1], PROMPTS[0], PROMPTS[4]]
    texts = [CONTINUATIONS[i % len(CONTINUATIONS)] for i in range(len(chats))]
    together = embedded_model.logprob(chats, texts)
    alone = [embedded_model.logprob([c], [t])[0] for c, t in zip(chats, texts, strict=True)]
    assert together == pytest.approx(alone, abs=2e-3)


@pytest.mark.model
def test_lockstep_next_token_logprobs_equal_single_sequence(embedded_model: Any) -> None:
    prompt = embedded_model.chat_prompt_ids(PROMPTS[0])
    drawn = [embedded_model.text_ids(CONTINUATIONS[i])[:3] for i in (0, 2, 4)]
    assert all(len(d) == 3 for d in drawn)
    for step in range(4):  # the first call shares the prompt; later calls extend the cache
        rows = [d[:step] for d in drawn]
        batch = embedded_model.next_token_logprobs_batch([prompt] * len(rows), rows)
        for row, d in zip(batch, rows, strict=True):
            single = embedded_model.next_token_logprobs(prompt + list(d))
            assert abs(row - single).max() < 2e-3


@pytest.mark.model
def test_lockstep_rows_with_their_own_prompts_equal_single_sequences(embedded_model: Any) -> None:
    """Rows of several pairs in one batch: prompts of different lengths (left padding), a
    prompt shared by two rows, a row repeated; every step equals the row scored alone."""
    prompts = [embedded_model.chat_prompt_ids(chat) for chat in PROMPTS[:3]]
    assert len({len(p) for p in prompts}) == 3
    rows_prompts = [prompts[0], prompts[1], prompts[1], prompts[2], prompts[2]]
    drawn = [embedded_model.text_ids(CONTINUATIONS[i])[:3] for i in (0, 2, 4, 2, 0)]
    for step in range(4):
        rows = [d[:step] for d in drawn]
        batch = embedded_model.next_token_logprobs_batch(rows_prompts, rows)
        assert batch.shape[0] == len(rows)
        for row, prompt, d in zip(batch, rows_prompts, rows, strict=True):
            single = embedded_model.next_token_logprobs(prompt + list(d))
            assert abs(row - single).max() < 2e-3
            assert int(row.argmax()) == int(single.argmax())


@pytest.mark.model
def test_prompt_ends_with_the_generation_prompt_and_no_stray_special_tokens(
    embedded_model: Any,
) -> None:
    tokenizer = embedded_model.tokenizer
    ids = embedded_model.chat_prompt_ids([("user", "Hi")])
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 3  # default system turn + user + assistant: no extra BOS
    # the answer's label span: the continuation's own tokens, nothing of the template
    answer = embedded_model.text_ids("Hello")
    assert tokenizer.decode(answer) == "Hello"
    assert embedded_model.tokenizer.eos_token_id in embedded_model.stop_ids()


@pytest.mark.parametrize(
    ("files", "lacks"),
    [
        ({"config.json": '{"foo": 1}'}, "a model_type in config.json, weights and tokenizer files"),
        ({"config.json": "nonsense{"}, "a config.json that is valid JSON, weights and tokenizer"),
        ({"notes.txt": "hi"}, "config.json, weights and tokenizer files"),
        ({"config.json": '{"model_type": "llama"}', "tokenizer.json": "{}"}, "lacks weights -"),
        ({"config.json": '{"model_type": "llama"}', "model.safetensors": ""}, "lacks tokenizer"),
    ],
)
def test_a_junk_model_folder_says_what_it_lacks(
    tmp_path: Any, files: dict[str, str], lacks: str
) -> None:
    from tuneproof.backends.hf import load_hf_model
    from tuneproof.errors import GeneratorError

    folder = tmp_path / "returned-model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(GeneratorError) as caught:
        load_hf_model(str(folder))
    message = str(caught.value)
    assert "\n" not in message and str(folder) in message and lacks in message
    assert "a model folder needs config.json" in message and "weights" in message
    assert "sentencepiece" not in message and "tiktoken" not in message


def test_a_folder_holding_a_gguf_points_at_the_file(tmp_path: Any) -> None:
    from tuneproof.backends.hf import load_hf_model
    from tuneproof.errors import GeneratorError

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(GeneratorError, match=r"or give the \.gguf file itself \(.*model\.gguf\)"):
        load_hf_model(str(tmp_path))
