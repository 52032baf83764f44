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
