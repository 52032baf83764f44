"""What every OpenAI-compatible backend shares: URLs, the API key, chat templates, errors.

- :func:`check_base_url` and :func:`public_url`: a base URL is validated once, and only its
  public form (no user info, query or fragment) is ever recorded or shown.
- :func:`api_key`: the key is read from an environment variable (default ``OPENAI_API_KEY``);
  local servers need none (the SDK insists on a non-empty string, so ``"no-key"`` is sent). It is
  never logged, shown or recorded: :func:`redact` blanks it out of server messages.
- :func:`server_error`: an ``openai`` SDK exception as a one-line :class:`ServerError` that says
  what to do next.
- :func:`load_chat_tokenizer`: a local tokenizer (``'embedded'``, an HF folder or a ``.gguf``
  file) whose chat template renders chat prompts as text for the raw ``/v1/completions`` endpoint.

The ``openai`` SDK and ``transformers`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tuneproof.errors import GeneratorError

BACKEND = "openai-compatible"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 4
EMBEDDED_TEMPLATE = "embedded"
MAX_RESPONSE_BYTES = 32 * 2**20
"""The cap on one answer's size, in bytes as received (:mod:`tuneproof.backends.openai.limits`).
The largest answer tuneproof asks for is the echo of a long prompt with its log-probs
(``/completions`` with ``echo``, ``logprobs=1``): per prompt token its text, log-prob, offset and
one top log-prob, 70-150 bytes of JSON, so a 128k-token context is 9-19 MB; 32 MiB leaves twice
that. Chat answers (at most 2 x signature tokens + 16 tokens) and top-20 candidates are a few kB."""
NO_ENDPOINT_STATUS = frozenset({404, 405, 501})
"""HTTP statuses meaning "this server has no such endpoint"."""
AUTH_STATUS = frozenset({401, 403})


class ServerError(GeneratorError):
    """An OpenAI-compatible server failed or refused a request. ``status`` is the HTTP status of
    its answer, or None when no answer came (unreachable, timed out, connection dropped)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ResponseRefused(ServerError):
    """An answer not read in full: larger than the size cap, or compressed (its size could not
    be capped). The SDK sees neither a time-out nor a connection error, so it never retries."""


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (safe to record and to show)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = "" if parts.port is None else str(parts.port)
    except ValueError:  # not a number: keep what was written, it is no secret
        port = parts.netloc.rpartition(":")[2]
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def check_base_url(base_url: str) -> str:
    """``base_url`` without a trailing slash; :class:`GeneratorError` if it is not http(s)."""
    parts = urlsplit(base_url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise GeneratorError(
            f"'{public_url(base_url)}' is not an http(s) URL - "
            "give --base-url like http://127.0.0.1:8080/v1"
        )
    return base_url.rstrip("/")


def root_url(base_url: str) -> str:
    """The server's root URL (``base_url`` without a trailing ``/v1``)."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def api_key(env: str) -> str:
    """The API key from the environment variable ``env``, or ``"no-key"`` (local servers)."""
    return os.environ.get(env) or "no-key"


def redact(text: str, env: str) -> str:
    """``text`` with the API key of ``env`` (if set) replaced by ``***``."""
    key = os.environ.get(env)
    return text.replace(key, "***") if key else text


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_detail(exc: Any) -> str:
    """The server's own message in an SDK status error (``{"error": {"message": ...}}``)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("message") or inner.get("detail") or inner)
        return str(inner)
    return str(getattr(exc, "message", exc))


def server_error(
    exc: Exception,
    *,
    source: str,
    model: str,
    path: str,
    api_key_env: str,
    timeout: float,
    attempts: int,
) -> ServerError:
    """A one-line :class:`ServerError` for the ``openai`` SDK exception ``exc`` raised by a
    request to ``path``; raises ``exc`` itself when it is not an SDK API error."""
    import openai

    status: int | None = None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = one_line(redact(error_detail(exc), api_key_env))
        if status in AUTH_STATUS:
            message = (
                f"{source} refused the request (HTTP {status}: {detail}) - "
                f"set {api_key_env} to a valid API key"
            )
        elif status == 404 and path.endswith("completions"):
            message = (
                f"{source} has no {path} endpoint or no model '{model}' (HTTP 404: {detail}) - "
                "check --base-url (it usually ends in /v1) and the model name"
            )
        else:
            message = f"{source} answered HTTP {status} on {path}: {detail}"
    elif isinstance(exc, openai.APITimeoutError):
        message = (
            f"{source} did not answer in full within {timeout:g} s after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} - is the server overloaded?"
        )
    elif isinstance(exc, openai.APIConnectionError):
        reason = one_line(redact(str(exc.__cause__ or exc), api_key_env))
        message = (
            f"cannot reach {source} ({reason}) - check --base-url and that the server is running"
        )
    else:
        raise exc
    return ServerError(message, status)


def template_turns(messages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """(role, content) pairs as OpenAI chat messages."""
    return [{"role": role, "content": content} for role, content in messages]


def render_with_tokenizer(spec: str, messages: Sequence[tuple[str, str]]) -> str:
    """``messages`` as prompt text with the assistant generation prompt, rendered by the chat
    template of the local tokenizer ``spec`` (see :func:`load_chat_tokenizer`)."""
    text: str = load_chat_tokenizer(spec).apply_chat_template(
        template_turns(messages), tokenize=False, add_generation_prompt=True
    )
    return text


def template_prompt(answer: Any) -> str | None:
    """The prompt text of a ``POST /apply-template`` answer (llama.cpp), or None."""
    prompt = answer.get("prompt") if isinstance(answer, Mapping) else None
    return prompt if isinstance(prompt, str) and prompt else None


@functools.lru_cache(maxsize=4)
def load_chat_tokenizer(spec: str) -> Any:
    """Load only the tokenizer of ``spec`` (``'embedded'``, an HF folder or a ``.gguf`` file) to
    render chat prompts; raise :class:`GeneratorError` when it is missing or has no template.

    Cached per ``spec`` for the life of the process (a GGUF tokenizer takes seconds to load)."""
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise GeneratorError(
            "--chat-template-from needs the 'hf' extra - run `pip install 'tuneproof[hf]'`"
        ) from exc
    if spec == EMBEDDED_TEMPLATE:
        from tuneproof.embedded import embedded_gguf_path

        path = embedded_gguf_path()
    else:
        path = Path(spec).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        elif path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        else:
            raise GeneratorError(
                f"--chat-template-from '{spec}' is not a tokenizer folder, a .gguf file or "
                "'embedded'"
            )
    except (OSError, ValueError) as exc:
        raise GeneratorError(f"cannot load the tokenizer '{spec}': {one_line(str(exc))}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise GeneratorError(
            f"the tokenizer '{spec}' has no chat template - use the chat model's own tokenizer"
        )
    return tokenizer


NEVER_RETRY = AUTH_STATUS | NO_ENDPOINT_STATUS
"""Statuses the SDK's retries are kept from repeating (it would retry 501, as any 5xx)."""


@functools.cache
def sdk_clients() -> tuple[type[Any], type[Any]]:
    """The ``openai`` SDK's ``(OpenAI, AsyncOpenAI)`` clients, made to skip :data:`NEVER_RETRY`
    in their retries (built once, on first use); a clear error without the ``openai`` extra."""
    try:
        from openai import AsyncOpenAI, OpenAI
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise GeneratorError(
            "OpenAI-compatible servers need the 'openai' extra - "
            "run `pip install 'tuneproof[openai]'`"
        ) from exc

    def should_retry(base: type[Any]) -> Any:
        def _should_retry(self: Any, response: Any) -> bool:
            retry: bool = response.status_code not in NEVER_RETRY and base._should_retry(
                self, response
            )
            return retry

        return _should_retry

    sync = type("Client", (OpenAI,), {"_should_retry": should_retry(OpenAI)})
    asynchronous = type("AsyncClient", (AsyncOpenAI,), {"_should_retry": should_retry(AsyncOpenAI)})
    return sync, asynchronous
