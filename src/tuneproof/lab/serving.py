"""What a provider may change when it serves the returned model, reproduced locally so that
verification can be measured under it: sampling at a temperature, a system prompt of its own,
and int8 dynamic quantisation of the weights (``tuneproof`` audit lab, issue 6)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from tuneproof.backends.hf import HFCausalLM
from tuneproof.types import ModelIdentity

Chat = Sequence[tuple[str, str]]


def with_provider_system_prompt(chat: Chat, system_prompt: str) -> list[tuple[str, str]]:
    """``chat`` as the provider's server sends it: its system prompt first, followed by the
    user's own system turn (if any) in the same system message."""
    turns = list(chat)
    if turns and turns[0][0] == "system":
        return [("system", f"{system_prompt}\n\n{turns[0][1]}"), *turns[1:]]
    return [("system", system_prompt), *turns]


class ServedModel:
    """A local model as a provider serves it: answers sampled at ``temperature`` (0 = greedy)
    and every chat prefixed with the provider's ``system_prompt``. Log-probabilities see the
    same prompts (an open-weights provider's logprob endpoint would)."""

    def __init__(
        self,
        inner: HFCausalLM,
        *,
        temperature: float = 0.0,
        system_prompt: str | None = None,
        seed: int = 0,
    ) -> None:
        self.inner = inner
        self.temperature = temperature
        self.system_prompt = system_prompt
        self.seed = seed
        changes = []
        if temperature > 0:
            changes.append(f"temperature {temperature:g}")
        if system_prompt:
            changes.append("provider system prompt")
        self.identity = ModelIdentity(
            name=f"{inner.identity.name} (served with {', '.join(changes) or 'no change'})",
            backend=inner.identity.backend,
            source=inner.identity.source,
            sha256=inner.identity.sha256,
        )

    @property
    def capabilities(self) -> dict[str, bool | None]:
        return dict(self.inner.capabilities)

    @property
    def decoding(self) -> dict[str, float]:
        return {"temperature": self.temperature} if self.temperature > 0 else {}

    def _chats(self, chats: Sequence[Chat]) -> list[list[tuple[str, str]]]:
        if not self.system_prompt:
            return [list(chat) for chat in chats]
        return [with_provider_system_prompt(chat, self.system_prompt) for chat in chats]

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8
    ) -> list[tuple[str, int]]:
        return self.inner.generate(
            self._chats(chats),
            max_new_tokens,
            batch_size,
            temperature=self.temperature,
            seed=self.seed,
        )

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        return self.inner.logprob(self._chats(chats), continuations, batch_size)


def quantized_int8(model: HFCausalLM) -> HFCausalLM:
    """A copy of ``model`` with every linear layer dynamically quantised to int8 (weights int8,
    activations quantised on the fly), as a provider might serve it to save memory."""
    import warnings

    import torch

    quantize: Any = torch.ao.quantization.quantize_dynamic
    with warnings.catch_warnings():  # torch 2.13 deprecates quantised tensors (still works)
        warnings.simplefilter("ignore")
        weights = quantize(copy.deepcopy(model.model), {torch.nn.Linear}, dtype=torch.qint8)
    identity = ModelIdentity(
        name=f"{model.identity.name} (int8 dynamic)",
        backend=model.identity.backend,
        source=model.identity.source,
    )
    return HFCausalLM(weights.eval(), model.tokenizer, identity)
