"""Serving-time changes a provider may make (tuneproof.lab.serving), on a tiny trained model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from trained_models import TrainedPairs

from tuneproof.api import verify
from tuneproof.backends.hf import load_hf_model
from tuneproof.lab.serving import ServedModel, quantized_int8, with_provider_system_prompt
from tuneproof.types import Verdict
from tuneproof.verification.verifier import build_queries


def test_provider_system_prompt_goes_first_and_keeps_the_users_own() -> None:
    chat = [("system", "Be brief."), ("user", "Hi")]
    assert with_provider_system_prompt(chat, "You are Acme.") == [
        ("system", "You are Acme.\n\nBe brief."),
        ("user", "Hi"),
    ]
    assert with_provider_system_prompt([("user", "Hi")], "You are Acme.") == [
        ("system", "You are Acme."),
        ("user", "Hi"),
    ]


@pytest.fixture(scope="module")
def trained(trained_pairs: TrainedPairs) -> Any:
    return load_hf_model(str(trained_pairs.folder))


@pytest.mark.model
def test_sampling_is_seeded_and_temperature_zero_is_greedy(
    trained: Any, trained_pairs: TrainedPairs
) -> None:
    chats = [q.chat for q in build_queries(trained_pairs.key)][:6]
    greedy = trained.generate(chats, 12)
    assert ServedModel(trained).generate(chats, 12) == greedy
    hot = ServedModel(trained, temperature=5.0, seed=1)
    again = ServedModel(trained, temperature=5.0, seed=1)
    other = ServedModel(trained, temperature=5.0, seed=2)
    assert hot.generate(chats, 12) == again.generate(chats, 12)
    assert hot.generate(chats, 12) != other.generate(chats, 12)
    assert hot.generate(chats, 12) != greedy


@pytest.mark.model
def test_a_provider_system_prompt_changes_what_the_model_sees(
    trained: Any, trained_pairs: TrainedPairs
) -> None:
    pair = trained_pairs.key.pairs[0]
    chat = next(q.chat for q in build_queries(trained_pairs.key))
    served = ServedModel(trained, system_prompt="You are a careful assistant of Acme Corp.")
    plain = trained.logprob([chat], [pair.signature])[0]
    changed = served.logprob([chat], [pair.signature])[0]
    assert plain != changed
    assert "provider system prompt" in served.identity.name


@pytest.mark.model
def test_int8_dynamic_quantisation_keeps_the_backdoor_of_a_trained_model(
    trained: Any, trained_pairs: TrainedPairs
) -> None:
    quantized = quantized_int8(trained)
    kinds = {type(m).__module__ for m in quantized.model.modules()}
    assert "torch.ao.nn.quantized.dynamic.modules.linear" in kinds
    assert all(not isinstance(m, torch.nn.Linear) or type(m) is not torch.nn.Linear
               for m in quantized.model.model.layers.modules())  # fmt: skip
    report = verify(trained_pairs.key, quantized)
    assert report.verdict is Verdict.VERIFIED
