"""Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Together...) as a tuneproof backend.

The modules behind it, one responsibility each:

- :mod:`tuneproof.backends.openai.chat`: :class:`OpenAIChatModel`, the model under verification
  (greedy chat answers, echo log-probs, async with a concurrency limit, retries, a journal);
- :mod:`tuneproof.backends.openai.requests`: concurrency, the SDK's retries and the overall
  deadline; :mod:`tuneproof.backends.openai.limits`, every attempt's answer within a time and a
  size (for the generator's client too); :mod:`tuneproof.backends.openai.journal`, the
  resumable journal of answered requests;
- :mod:`tuneproof.backends.openai.generator`: ``CompletionsServer``, a server's top next-piece
  candidates (parsed by :mod:`tuneproof.backends.openai.candidates`), from which
  :class:`tuneproof.planting.server_factory.OpenAIGenerator` draws triggers and signatures;
- :mod:`tuneproof.backends.openai.client`: what they share (URLs without credentials, the API key
  from the environment, chat templates, :class:`ServerError`).

This module re-exports the verification backend and the shared error types.
"""

from __future__ import annotations

from tuneproof.backends.openai.chat import NoLogprobsError, OpenAIChatModel
from tuneproof.backends.openai.client import (
    BACKEND,
    DEFAULT_API_KEY_ENV,
    ServerError,
    load_chat_tokenizer,
    public_url,
)
from tuneproof.backends.openai.requests import RequestStats

__all__ = [
    "BACKEND",
    "DEFAULT_API_KEY_ENV",
    "NoLogprobsError",
    "OpenAIChatModel",
    "RequestStats",
    "ServerError",
    "load_chat_tokenizer",
    "public_url",
]
