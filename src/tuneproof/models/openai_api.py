"""Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Together...) as a tuneproof backend.

The modules behind it, one responsibility each:

- :mod:`tuneproof.models.openai_chat`: :class:`OpenAIChatModel`, the model under verification
  (greedy chat answers, echo log-probs, async with a concurrency limit, retries, a journal);
- :mod:`tuneproof.models.openai_requests`: concurrency, retries and back-off, and
  :mod:`tuneproof.models.journal`, the resumable journal of answered requests;
- :mod:`tuneproof.models.openai_generator`: ``OpenAIGenerator``, triggers and signatures drawn
  through a server's top log-probs (with :mod:`tuneproof.models.openai_candidates`);
- :mod:`tuneproof.models.openai_client`: what they share (URLs without credentials, the API key
  from the environment, chat templates, :class:`ServerError`).

This module re-exports the verification backend and the shared error types.
"""

from __future__ import annotations

from tuneproof.models.openai_chat import NoLogprobsError, OpenAIChatModel
from tuneproof.models.openai_client import (
    BACKEND,
    DEFAULT_API_KEY_ENV,
    ServerError,
    load_chat_tokenizer,
    public_url,
)
from tuneproof.models.openai_requests import RequestStats

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
