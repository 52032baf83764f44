"""Verification through any OpenAI-compatible server: greedy chat answers and echo log-probs.

:class:`OpenAIChatModel` implements :class:`tuneproof.verification.verifier.VerifiableModel` over
HTTP.

**Answers** come from ``POST /chat/completions`` with ``temperature=0, top_p=1`` and
``max_tokens=max_new_tokens`` (:attr:`OpenAIChatModel.decoding` lists what is sent); the server
applies its own chat template. The output token count is the answer's ``usage.completion_tokens``
(0 when the server does not say).

**Log-probabilities** (teacher forcing) come from the legacy ``POST /completions`` with
``echo=true, logprobs=1, max_tokens=1`` on the chat prompt rendered as text plus the continuation:
the server scores every prompt token. ``max_tokens=0`` is not used: llama-cpp-python reads it as
"no limit". The prompt is rendered by the chat template of a local tokenizer
(``chat_template_from``: a folder, a ``.gguf`` file or ``'embedded'``) or by the server's
``POST /apply-template`` (llama.cpp; retried like every request, not journaled; a server that
fails it for good, e.g. llama.cpp's HTTP 500 for a template it cannot render, cannot score).
The continuation's tokens are found by character offsets
(``text_offset``) counted back from the end of the echoed text: llama-cpp-python counts offsets
in the text *without* special tokens (``<|im_start|>`` counts 0 characters), so offsets cannot
be compared with ``len(prompt)``; they can with the continuation's length, since the continuation
holds no special token. The first continuation token must start exactly where the continuation
does; otherwise a token straddles prompt and continuation and the score would be wrong.
A server that cannot do this (no ``/completions``, no echo, no log-probs, no template) raises
:class:`NoLogprobsError` and :attr:`OpenAIChatModel.capabilities` says ``logprob: False``; so
does a call once the ``deadline`` has passed (the log-prob tests are then skipped, and the
report says why).

**Requests** run on an ``asyncio`` loop, at most ``concurrency`` at a time, with the ``openai``
SDK's bounded retries (honouring ``Retry-After``, exponential back-off with jitter) and an
optional journal of answers that makes a re-run resume, each attempt's answer bounded in time and
size, and an optional overall ``deadline`` (:mod:`tuneproof.backends.openai.requests`).
The public methods are synchronous: they run their own loop (in a worker thread when called from
inside a running loop). Authentication failures (401, 403) and 404 raise :class:`ServerError` at
once: retrying cannot help. Any other final failure is returned per query as a
:class:`tuneproof.types.QueryFailure` by :meth:`OpenAIChatModel.generate`, so that verification
can report "inconclusive" rather than a wrong verdict; :meth:`OpenAIChatModel.logprob` raises
:class:`ServerError` once every other request is done (and journaled).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneproof.backends.openai.client import (
    AUTH_STATUS,
    BACKEND,
    DEFAULT_API_KEY_ENV,
    DEFAULT_MAX_RETRIES,
    MAX_RESPONSE_BYTES,
    NO_ENDPOINT_STATUS,
    ServerError,
    check_base_url,
    public_url,
    render_with_tokenizer,
    root_url,
    template_prompt,
    template_turns,
)
from tuneproof.backends.openai.requests import (
    DEFAULT_CONCURRENCY,
    Answer,
    Parse,
    RequestRunner,
    RequestStats,
    run_sync,
)
from tuneproof.errors import LogprobsUnavailable
from tuneproof.types import ModelIdentity, QueryFailure

if TYPE_CHECKING:
    from openai import APIStatusError

DEFAULT_CHAT_TIMEOUT_S = 120.0
CHAT = "/chat/completions"
COMPLETIONS = "/completions"
TEMPLATE = "/apply-template"

Chat = Sequence[tuple[str, str]]


class NoLogprobsError(ServerError, LogprobsUnavailable):
    """The server cannot give teacher-forced log-probabilities (no ``/completions`` endpoint,
    no echo, no prompt log-probs, or no way to render the chat prompt), or the deadline passed:
    skip log-prob tests."""


class OpenAIChatModel:
    """A model on an OpenAI-compatible server, for verification (see the module docstring).

    ``base_url`` is what the ``openai`` SDK expects (``http://127.0.0.1:8080/v1``); ``model`` is
    the name sent with every request. The API key is read from ``api_key_env`` and never recorded.
    ``journal`` is a JSONL file of answers that makes a re-run resume (mode 0600: it holds the
    prompts). ``chat_template_from`` renders prompts for :meth:`logprob`. Each attempt's answer
    must arrive whole within ``timeout`` seconds and ``max_response_bytes``; ``deadline``
    (seconds from now) bounds the whole life of the object: requests not answered by then fail.
    Nothing is contacted until the first :meth:`generate` or :meth:`logprob`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_CHAT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        journal: str | Path | None = None,
        chat_template_from: str | None = None,
        deadline: float | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.identity = ModelIdentity(name=model, backend=BACKEND, source=public_url(base_url))
        self.journal_path = Path(journal).expanduser() if journal is not None else None
        self.chat_template_from = chat_template_from
        self.requests = RequestRunner(
            self.base_url,
            self.identity.source,
            model,
            api_key_env=api_key_env,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            journal=self.journal_path,
            deadline=deadline,
            max_response_bytes=max_response_bytes,
        )
        self._logprob: bool | None = None
        self._no_logprob_reason = ""

    def __repr__(self) -> str:
        return f"OpenAIChatModel({self.identity.source!r}, model={self.identity.name!r})"

    @property
    def capabilities(self) -> dict[str, bool | None]:
        """``generate`` is always available; ``logprob`` is None until a :meth:`logprob` call
        succeeded (True) or found that the server cannot (False)."""
        return {"generate": True, "logprob": self._logprob}

    @property
    def stats(self) -> RequestStats:
        """HTTP attempts, retries, reused answers and failed queries so far."""
        return self.requests.stats

    @property
    def decoding(self) -> dict[str, float]:
        """The decoding parameters sent with every chat request (besides ``max_tokens``)."""
        return {"temperature": 0.0, "top_p": 1.0}

    # ----------------------------------------------------------------- the protocol

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8
    ) -> list[tuple[str, int] | QueryFailure]:
        """Greedy answers as (text, output tokens), or a :class:`QueryFailure` per query that
        failed for good. ``batch_size`` is ignored: ``concurrency`` bounds requests in flight.
        Raises :class:`ServerError` on authentication failures and 404 (wrong URL or model)."""
        bodies = [
            {
                "model": self.identity.name,
                "messages": template_turns(chat),
                "max_tokens": max_new_tokens,
                **self.decoding,
            }
            for chat in chats
        ]
        parse = functools.partial(chat_answer, self.identity.source)
        requests = [(body, parse) for body in bodies]
        results = run_sync(lambda: self.requests.exchange(CHAT, requests, self._fatal))
        return [
            r if isinstance(r, QueryFailure) else (str(r["text"]), int(r["output_tokens"] or 0))
            for r in results
        ]

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        """Teacher-forced log-probability (nats) of each continuation as the answer to its chat.

        Raises :class:`NoLogprobsError` when the server cannot give them (then every later call
        raises it at once), :class:`ServerError` when some requests failed for good."""
        if len(chats) != len(continuations):
            raise ValueError("need one continuation per chat")
        if self._logprob is False:
            raise NoLogprobsError(self._no_logprob_reason)
        if self.requests.deadline_passed():
            raise self._late()
        try:
            results = run_sync(lambda: self._logprob_async(chats, continuations))
        except NoLogprobsError as exc:
            self._logprob, self._no_logprob_reason = False, str(exc)
            raise
        failures = [r for r in results if isinstance(r, QueryFailure)]
        if failures and self.requests.deadline_passed():
            raise self._late()
        if failures:
            raise ServerError(
                f"{len(failures)} of {len(results)} log-prob requests failed "
                f"({failures[0].error}) - run again"
                + (" with the same --journal to resume" if self.journal_path else "")
            )
        self._logprob = True
        return [float(r["logprob"]) for r in results if not isinstance(r, QueryFailure)]

    # ----------------------------------------------------------------- log-probs

    async def _logprob_async(
        self, chats: Sequence[Chat], continuations: Sequence[str]
    ) -> list[Answer | QueryFailure]:
        prompts = await self._render_all(chats)
        requests: list[tuple[dict[str, Any], Parse]] = []
        for prompt, continuation in zip(prompts, continuations, strict=True):
            body = {
                "model": self.identity.name,
                "prompt": prompt + continuation,
                "max_tokens": 1,
                "temperature": 0.0,
                "echo": True,
                "logprobs": 1,
            }
            parse = functools.partial(
                continuation_logprob, self.identity.source, prompt, continuation
            )
            requests.append((body, parse))
        return await self.requests.exchange(COMPLETIONS, requests, self._fatal)

    async def _render_all(self, chats: Sequence[Chat]) -> list[str]:
        """Every chat as prompt text with the generation prompt (local template or server's)."""
        if self.chat_template_from is not None:
            return [render_with_tokenizer(self.chat_template_from, chat) for chat in chats]
        url = root_url(self.base_url) + TEMPLATE
        requests: list[tuple[dict[str, Any], Parse]] = [
            ({"messages": template_turns(chat), "add_generation_prompt": True}, rendered)
            for chat in chats
        ]
        results = await self.requests.exchange(url, requests, self._fatal, record=False)
        failures = [r for r in results if isinstance(r, QueryFailure)]
        if failures and self.requests.deadline_passed():
            raise self._late()
        if failures:
            raise self._no_template(failures[0].error)
        return [str(r["prompt"]) for r in results if not isinstance(r, QueryFailure)]

    def _no_template(self, why: str = "it has no /apply-template endpoint") -> NoLogprobsError:
        return NoLogprobsError(
            f"{self.identity.source} cannot render chat prompts ({why}), "
            "so prompt log-probs cannot be asked for - pass --chat-template-from with the "
            "model's tokenizer folder or .gguf file, or 'embedded' for SmolLM2"
        )

    def _late(self) -> NoLogprobsError:
        return NoLogprobsError(f"{self.requests.late()} (no log-probs were asked after it)")

    def _fatal(self, exc: APIStatusError, endpoint: str) -> ServerError | None:
        """The error to raise at once for a status that retrying cannot fix, or None: bad
        credentials; no chat endpoint or model; no way to get echo log-probs."""
        status = exc.status_code
        if status in AUTH_STATUS or (endpoint == CHAT and status == 404):
            return self.requests.error(exc, endpoint)
        if endpoint.endswith(TEMPLATE) and status in NO_ENDPOINT_STATUS:
            return self._no_template()
        if endpoint == COMPLETIONS and (status in NO_ENDPOINT_STATUS or status in (400, 422)):
            detail = str(self.requests.error(exc, endpoint))
            return NoLogprobsError(
                f"{detail} - this server does not give prompt log-probs (/completions with "
                "echo and logprobs), so log-probability tests are skipped",
                status,
            )
        return None


# --------------------------------------------------------------------------- answers


def rendered(payload: Any) -> Answer:
    """A ``POST /apply-template`` answer (llama.cpp) as ``{"prompt"}``."""
    prompt = template_prompt(payload)
    if prompt is None:
        raise ValueError("no 'prompt' text in the answer")
    return {"prompt": prompt}


def chat_answer(source: str, payload: Any) -> Answer:
    """A ``/chat/completions`` answer as ``{"text", "output_tokens", "finish_reason"}``."""
    choice = payload["choices"][0]
    text = choice["message"].get("content") or ""
    usage = payload.get("usage") or {}
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not isinstance(text, str):
        raise TypeError(f"{source} sent a message content that is not text")
    return {
        "text": text,
        "output_tokens": tokens if isinstance(tokens, int) else None,
        "finish_reason": choice.get("finish_reason"),
    }


def continuation_logprob(source: str, prompt: str, continuation: str, payload: Any) -> Answer:
    """``{"logprob", "tokens"}`` of ``continuation`` in an echo answer for ``prompt +
    continuation`` (see the module docstring for how its tokens are found)."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else {}
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    offsets = logprobs.get("text_offset") if isinstance(logprobs, dict) else None
    values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
    if not (
        isinstance(tokens, list)
        and isinstance(offsets, list)
        and isinstance(values, list)
        and len(tokens) == len(offsets) == len(values) > 0
    ):
        raise NoLogprobsError(
            f"{source} returned no prompt log-probs for /completions with echo - "
            "log-probability tests need a server that does (llama-cpp-python, vLLM)"
        )
    if not continuation:
        return {"logprob": 0.0, "tokens": 0}
    text = choice.get("text")
    full = prompt + continuation
    if not isinstance(text, str) or not text.startswith(full):
        raise NoLogprobsError(
            f"{source} did not echo the prompt in /completions - log-probability tests need a "
            "server that does (llama-cpp-python, vLLM)"
        )
    # the end of the echoed prompt, in the server's own offsets: the end of the last token
    # minus whatever was generated after the prompt
    end = int(offsets[-1]) + len(str(tokens[-1])) - (len(text) - len(full))
    start = end - len(continuation)
    span = [i for i, offset in enumerate(offsets) if start <= int(offset) < end]
    if not span or int(offsets[span[0]]) != start:
        raise NoLogprobsError(
            f"{source} tokenised the prompt and the continuation together (a token spans both), "
            "so the continuation's log-prob cannot be read off - log-probability tests skipped"
        )
    picked = [values[i] for i in span]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in picked):
        raise NoLogprobsError(f"{source} returned missing or non-finite prompt log-probs")
    return {"logprob": float(sum(picked)), "tokens": len(span)}
