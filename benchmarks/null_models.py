"""Null providers for benchmarks/null_gauntlet.py: backends that never saw the key, each broken
or dishonest in its own way. All follow the VerifiableModel protocol of
tuneproof.verification.queries
(``identity``, ``generate`` -> (text, output tokens), ``logprob`` -> nats).

None of them depends on a key: the randomness they use (NaN masks, sampling seeds) comes from
seeds fixed by the benchmark, never from a key's secret, so verifying them against a key is a
draw from H0-indep (and, for answers from the base model, from H0-controls).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from tuneproof.backends.hf import HFCausalLM
from tuneproof.types import ModelIdentity, QueryFailure

Chat = Sequence[tuple[str, str]]
Answer = tuple[str, int] | QueryFailure


def _frozen(chat: Chat) -> tuple[tuple[str, str], ...]:
    return tuple((role, content) for role, content in chat)


def _renamed(identity: ModelIdentity, name: str) -> ModelIdentity:
    return ModelIdentity(
        name=name, backend=identity.backend, source=identity.source, sha256=identity.sha256
    )


class Memo:
    """``inner`` with its answers and log-likelihoods remembered (per chat and continuation).

    Verifying one key at two alphas, or several providers that share the base's greedy answers
    and scores, then costs one model run: the second verification sees exactly the same
    answers and scores as the first (the same samples for a sampling backend, the same NaN
    mask for :class:`PartialNaN`). ``generate`` with extra keyword options (``temperature``,
    ``seed``: :class:`tuneproof.lab.serving.ServedModel`) is passed through, never remembered.
    Scores are computed grouped by chat, a signature and its decoys always together in one
    call (one computation for all candidates, as verification asks for them); batching moves a
    local model's scores by ~1e-5 nats. Keep one Memo per key: it never forgets."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.identity: ModelIdentity = inner.identity
        self._answers: dict[Any, Answer] = {}
        self._scores: dict[Any, float] = {}

    @property
    def capabilities(self) -> dict[str, bool | None]:
        return dict(self.inner.capabilities)

    def __getattr__(self, name: str) -> Any:  # count_tokens, tokenizer, ... of the inner model
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8, **options: Any
    ) -> list[Answer]:
        if options:
            return list(self.inner.generate(chats, max_new_tokens, batch_size, **options))
        keys = [(_frozen(chat), max_new_tokens) for chat in chats]
        todo = list(dict.fromkeys(k for k in keys if k not in self._answers))
        if todo:
            answers = self.inner.generate([list(k[0]) for k in todo], max_new_tokens, batch_size)
            self._answers.update(zip(todo, answers, strict=True))
        return [self._answers[k] for k in keys]

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        keys = [(_frozen(c), text) for c, text in zip(chats, continuations, strict=True)]
        by_chat: dict[Any, list[Any]] = {}
        for k in dict.fromkeys(keys):
            by_chat.setdefault(k[0], []).append(k)
        # many continuations of one chat (a signature and its decoys) go in one call, all of
        # them rescored unless all are known, so that they come from one computation (a local
        # model runs the prompt once and shares its KV cache, HFCausalLM.logprob); chats asked
        # once go together in one batched call
        calls = [ks for ks in by_chat.values() if len(ks) > 1 and not self._known(ks)]
        calls.append([ks[0] for ks in by_chat.values() if len(ks) == 1 and not self._known(ks)])
        for call in calls:
            if call:
                scores = self.inner.logprob(
                    [list(k[0]) for k in call], [k[1] for k in call], batch_size
                )
                self._scores.update(zip(call, (float(s) for s in scores), strict=True))
        return [self._scores[k] for k in keys]

    def _known(self, keys: Sequence[Any]) -> bool:
        return all(k in self._scores for k in keys)


class _Scored:
    """Answers from ``inner``; subclasses replace its log-likelihoods."""

    label = "scored"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.identity = _renamed(inner.identity, f"{inner.identity.name} ({self.label})")
        self.capabilities = {"generate": True, "logprob": True}
        self.decoding = inner.decoding

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8
    ) -> list[Answer]:
        return list(self.inner.generate(chats, max_new_tokens, batch_size))

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        raise NotImplementedError


class ConstantScores(_Scored):
    """``inner``'s greedy answers; every log-likelihood equal to ``value`` (a server that
    returns a placeholder, or a model whose output distribution collapsed to uniform)."""

    label = "constant log-likelihood"

    def __init__(self, inner: Any, value: float = -5.0) -> None:
        super().__init__(inner)
        self.value = value

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        return [self.value] * len(continuations)


class NaNScores(_Scored):
    """``inner``'s greedy answers; every log-likelihood NaN (a wrapper, for backends where NaN
    weights do not give NaN scores; :func:`nan_weights` makes a real broken model)."""

    label = "NaN log-likelihood"

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        return [math.nan] * len(continuations)


class PartialNaN(_Scored):
    """``inner``'s answers and log-likelihoods, each score independently replaced by NaN with
    probability ``share`` (seeded once: the masks do not depend on any key)."""

    def __init__(self, inner: Any, share: float = 0.1, seed: int = 0) -> None:
        self.label = f"{share:.0%} of log-likelihoods NaN"
        super().__init__(inner)
        self.share = share
        self.rng = np.random.default_rng(seed)

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        scores = self.inner.logprob(chats, continuations, batch_size)
        broken = self.rng.random(len(scores)) < self.share
        return [math.nan if b else float(s) for s, b in zip(scores, broken, strict=True)]


class RepeatPrompt(_Scored):
    """Answers every chat with its last user turn, verbatim (an echo server); log-likelihoods
    from ``inner``."""

    label = "repeats the prompt"

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8
    ) -> list[Answer]:
        answers: list[Answer] = []
        for chat in chats:
            text = next((content for role, content in reversed(chat) if role == "user"), "")
            answers.append((text, self.inner.count_tokens(text)))
        return answers

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        return list(self.inner.logprob(chats, continuations, batch_size))


def nan_weights(model: HFCausalLM) -> HFCausalLM:
    """A copy of ``model`` whose final norm weights are NaN: a real diverged model, whose every
    logit and so every log-likelihood is NaN (and whose greedy answers are whatever argmax
    picks among NaNs)."""
    import torch

    weights = copy.deepcopy(model.model)
    with torch.no_grad():
        weights.model.norm.weight.fill_(math.nan)
    return HFCausalLM(weights.eval(), model.tokenizer, _renamed(model.identity, "NaN weights"))
