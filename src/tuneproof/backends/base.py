"""The contract between the core and every model backend, and the registry that picks one.

The core (planting, verification) reads only what is declared here: a backend says what it can
do in ``capabilities`` (``generate``, ``logprob``: True, False, or None for "not known until
tried"), the decoding it uses in ``decoding``, and implements the methods of the protocols it
claims. Backends are chosen by :func:`resolve_model` from a registry (:func:`register_backend`),
never by string tests in the core; their modules are imported only when chosen, so that torch or
the ``openai`` SDK load only for the commands that need them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from tuneproof.errors import GeneratorError
from tuneproof.types import Chat, ModelIdentity, QueryFailure


@dataclass(frozen=True)
class TokenVocabulary:
    """The true byte string of every token id, and which ids are special.

    ``token_bytes[i]`` is what token ``i`` contributes to the decoded text (byte-level BPE tokens
    are not their printed form: ``"Ġworld"`` is ``b" world"``).
    """

    token_bytes: tuple[bytes, ...]
    special_ids: frozenset[int]

    def __len__(self) -> int:
        return len(self.token_bytes)


@runtime_checkable
class VerifiableModel(Protocol):
    """What verification needs from a backend (local weights or an HTTP server)."""

    identity: ModelIdentity

    @property
    def capabilities(self) -> Mapping[str, bool | None]:
        """``generate`` and ``logprob``: True, False, or None when not known until tried."""
        ...

    @property
    def decoding(self) -> Mapping[str, float]:
        """Decoding parameters sent with every generation besides the token budget."""
        ...

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8
    ) -> Sequence[tuple[str, int] | QueryFailure]:
        """Greedy answers as (text, output tokens), or a QueryFailure for a failed query."""
        ...

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        """Teacher-forced log-probability (nats) of each continuation as the answer; raises
        :class:`tuneproof.errors.LogprobsUnavailable` when the backend cannot score."""
        ...


class NextTokenModel(Protocol):
    """What the local sampler needs from a language model: its full next-token distribution."""

    @property
    def vocabulary(self) -> TokenVocabulary: ...

    def chat_prompt_ids(self, messages: Chat) -> list[int]:
        """Token ids of ``messages`` (role, content) rendered by the chat template, ending with
        the assistant generation prompt."""
        ...

    def text_ids(self, text: str) -> list[int]:
        """Token ids of plain ``text`` with no special tokens added."""
        ...

    def next_token_logprobs(self, context: Sequence[int]) -> npt.NDArray[np.float32]:
        """Log-probabilities of every vocabulary token after ``context``."""
        ...


def can_score(model: VerifiableModel) -> bool:
    """Whether a plan may count on ``model``'s log-likelihoods: unless the backend declares it
    cannot, they are planned (a planned test that cannot run only spends its share of alpha)."""
    return model.capabilities.get("logprob") is not False


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Backend:
    """A registered backend; its loaders are ``"module:attribute"`` paths, imported only when
    the backend is chosen."""

    name: str
    model_loader: str
    """``loader(spec, **options)`` (``loader(base_url, spec, **options)`` when ``remote``): the
    model under verification, a :class:`VerifiableModel`"""
    generator_loader: str | None
    """``loader(spec) -> NextTokenModel`` for a local backend whose full next-token
    distribution the sampler can read; None for a server (planting draws through it with its
    own factory, :data:`tuneproof.planting.factory.SERVER_FACTORIES`)"""
    remote: bool
    """Whether the backend needs a server URL (``base_url``)."""
    options: frozenset[str] = frozenset()
    """The loader options it takes; :func:`resolve_model` passes only these."""
    base_of: str | None = None
    """``base_of(spec) -> str | None``: the base model a fine-tune records (e.g. a PEFT
    adapter's config), when it is available; never guessed."""

    def load(self, which: str) -> Callable[..., Any]:
        return load_path(which)


def load_path(path: str) -> Callable[..., Any]:
    """The callable at ``"module:attribute"``, importing the module now."""
    module, _, attribute = path.partition(":")
    loader: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return loader


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` to the registry under its name (a later registration replaces it)."""
    BACKENDS[backend.name] = backend
    return backend


register_backend(
    Backend(
        "hf",
        "tuneproof.backends.hf:load_hf_model",
        "tuneproof.backends.hf:load_hf_generator",
        remote=False,
        options=frozenset({"base_model"}),
        base_of="tuneproof.backends.hf:recorded_base",
    )
)
register_backend(
    Backend(
        "openai",
        "tuneproof.backends.openai.chat:OpenAIChatModel",
        None,
        remote=True,
        options=frozenset({"journal", "chat_template_from", "api_key_env", "deadline"}),
    )
)


def backend_for(spec: str, base_url: str | None, *, prefixed: bool = False) -> tuple[Backend, str]:
    """The backend for ``spec`` and the model name it is given: ``NAME:MODEL`` picks the
    registered remote backend ``NAME``; otherwise a server URL picks ``openai`` (unless
    ``prefixed``: then a server model must be named ``openai:MODEL``, as generators are), and no
    URL the local ``hf`` backend (embedded, HF folder, PEFT adapter or ``.gguf`` model)."""
    prefix, sep, rest = spec.partition(":")
    remote = [name for name, b in BACKENDS.items() if b.remote]
    if sep and prefix in remote:
        backend, name = BACKENDS[prefix], rest
        if not base_url:
            raise GeneratorError(
                f"{spec!r} is served by an OpenAI-compatible server: give --base-url URL"
                " (e.g. http://127.0.0.1:8080/v1)"
            )
    elif base_url and prefixed:
        raise GeneratorError(f"--base-url goes only with a served model, named {remote[0]}:MODEL")
    else:
        backend, name = (BACKENDS["openai"] if base_url else BACKENDS["hf"]), spec
    return backend, name


def resolve_model(spec: str, *, base_url: str | None = None, **options: Any) -> VerifiableModel:
    """The model under verification named by ``spec`` (see :func:`backend_for`); ``options``
    go to the backend's loader (a local loader ignores the server options)."""
    backend, name = backend_for(spec, base_url)
    loader = backend.load(backend.model_loader)
    chosen = {k: v for k, v in options.items() if k in backend.options}
    model: VerifiableModel = (
        loader(base_url, name, **chosen) if backend.remote else loader(name, **chosen)
    )
    return model


def recorded_base_model(spec: str, base_url: str | None = None) -> str | None:
    """The base model that ``spec``'s backend finds recorded with it (None when it records
    none, or the backend cannot tell)."""
    backend, name = backend_for(spec, base_url)
    if backend.base_of is None:
        return None
    base: str | None = backend.load(backend.base_of)(name)
    return base
