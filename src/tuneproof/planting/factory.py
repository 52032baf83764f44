"""Backdoor factories: what makes the secret parts of a backdoor (its trigger and signature).

:class:`ModelBackdoorFactory` draws them from a local language model;
:class:`tuneproof.planting.server_factory.OpenAIGenerator` from an OpenAI-compatible server.
:func:`make_factory` picks one through the backend registry (:mod:`tuneproof.backends.base`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tuneproof.backends.base import NextTokenModel, backend_for, load_path
from tuneproof.config import DEFAULT_API_KEY_ENV, PlantConfig
from tuneproof.datasets import Message
from tuneproof.errors import TuneproofError
from tuneproof.planting.continuation import ContinuationRequest, draw_continuations
from tuneproof.planting.sampler import (
    SampledSequence,
    sample_signature,
    sample_signature_sets,
    signature_prompt_ids,
)
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.tokens import TokenRules
from tuneproof.planting.triggers import ModelPieces, draw_trigger
from tuneproof.types import ModelIdentity


class BackdoorFactory(Protocol):
    """Makes the secret parts of a backdoor. The model-backed one is :class:`ModelBackdoorFactory`;
    benchmarks may pass a precomputed one to leave model time out. A class that subclasses this
    protocol gets :meth:`signature_sets` as a loop over :meth:`signature`."""

    identity: ModelIdentity

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        """A trigger in the style of ``prompt_text``."""
        ...

    def signature(self, messages: Sequence[Message], stream: SecretStream) -> SampledSequence:
        """A prefix-free signature drawn as the answer to ``messages``."""
        ...

    def signature_sets(
        self,
        groups: Sequence[tuple[Sequence[Message], Sequence[SecretStream]]],
        progress: Callable[[int], None] | None = None,
    ) -> list[list[SampledSequence]]:
        """For each (messages, streams) group, one signature per stream (a pair's true
        signature and its decoys), each drawn exactly as :meth:`signature` draws it with that
        stream; ``progress(done)`` counts the groups finished."""
        out = []
        for done, (messages, streams) in enumerate(groups, start=1):
            out.append([self.signature(messages, stream) for stream in streams])
            if progress:
                progress(done)
        return out

    def continuations(
        self,
        requests: Sequence[tuple[Sequence[Message], SampledSequence, int, SecretStream]],
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """For each (messages, signature, budget, stream): the generator's text after the
        signature, at most ``budget`` tokens (:mod:`tuneproof.planting.continuation`). This
        default writes none (the answer is the signature alone), for factories that cannot
        sample."""
        return [""] * len(requests)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the size summary."""
        ...


class GeneratorModel(NextTokenModel, Protocol):
    """A local model that draws backdoors: the sampler's :class:`NextTokenModel`, its identity
    for the key, and its tokenizer's counts for the size summary."""

    identity: ModelIdentity

    def count_tokens(self, text: str) -> int: ...


class ModelBackdoorFactory(BackdoorFactory):
    """Triggers and signatures from a local language model (the embedded one by default)."""

    def __init__(
        self,
        model: GeneratorModel,
        k: int,
        m: int,
        trigger_tokens: int,
        support: int | None = None,
        sampler: str = "capped",
    ) -> None:
        self.model = model
        self.identity: ModelIdentity = model.identity
        self.k, self.m, self.trigger_tokens = k, m, trigger_tokens
        self.support = k if support is None else support
        self.sampler = sampler
        self._rules = TokenRules.for_vocabulary(model.vocabulary)

    @classmethod
    def from_config(cls, model: GeneratorModel, config: PlantConfig) -> ModelBackdoorFactory:
        """A factory drawing with ``model`` by the sampler settings of ``config``."""
        return cls(model, config.k, config.m, config.trigger_tokens, config.support, config.sampler)

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        return draw_trigger(
            lambda: ModelPieces(self.model, prompt_text, self._rules), self.trigger_tokens, stream
        )

    def signature(self, messages: Sequence[Message], stream: SecretStream) -> SampledSequence:
        chat = [(message.role, message.content) for message in messages]
        return sample_signature(
            self.model, chat, self.k, self.m, stream, self._rules, self.support, self.sampler
        )

    def signature_sets(
        self,
        groups: Sequence[tuple[Sequence[Message], Sequence[SecretStream]]],
        progress: Callable[[int], None] | None = None,
    ) -> list[list[SampledSequence]]:
        """Every group's signatures drawn together, in lockstep batches across groups
        (:func:`~tuneproof.planting.sampler.sample_signature_sets`)."""
        chats = [([(m.role, m.content) for m in messages], streams) for messages, streams in groups]
        return sample_signature_sets(
            self.model, chats, self.k, self.m, self._rules, progress, self.support, self.sampler
        )

    def continuations(
        self,
        requests: Sequence[tuple[Sequence[Message], SampledSequence, int, SecretStream]],
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Every continuation drawn together, one batched forward per token
        (:func:`~tuneproof.planting.continuation.draw_continuations`)."""
        drawn = [
            ContinuationRequest(
                signature_prompt_ids(self.model, [(m.role, m.content) for m in messages])
                + list(signature.token_ids),
                budget,
                stream,
            )
            for messages, signature, budget, stream in requests
        ]
        return draw_continuations(self.model, drawn, progress=progress)

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)


def make_factory(
    generator: str,
    k: int,
    m: int,
    trigger_tokens: int,
    *,
    support: int | None = None,
    sampler: str = "capped",
    base_url: str | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = DEFAULT_API_KEY_ENV,
) -> BackdoorFactory:
    """The backdoor factory for ``generator``: a served model (``openai:MODEL``, with
    ``base_url``) from its backend's generator loader, else a local model ('embedded', an HF
    folder or a .gguf file) wrapped in :class:`ModelBackdoorFactory`."""
    backend, name = backend_for(generator, base_url, prefixed=True)
    if backend.generator_loader is None:
        if sampler != "capped":
            raise TuneproofError(
                f"--sampler {sampler} needs a local generator (the embedded model, an HF folder"
                " or a .gguf file): a server's top log-probs cannot draw from the whole"
                " distribution; use --sampler capped with a served generator"
            )
        make = load_path(SERVER_FACTORIES[backend.name])
        given = {"chat_template_from": chat_template_from, "api_key_env": api_key_env}
        options = {key: value for key, value in given.items() if key in backend.options}
        factory: BackdoorFactory = make(
            base_url, name, k, m, trigger_tokens, support=support, **options
        )
        return factory
    model = backend.load(backend.generator_loader)(name)
    return ModelBackdoorFactory(model, k, m, trigger_tokens, support, sampler)


SERVER_FACTORIES: dict[str, str] = {
    "openai": "tuneproof.planting.server_factory:OpenAIGenerator",
}
"""The backdoor factory that draws through each server backend (by its registry name)."""
