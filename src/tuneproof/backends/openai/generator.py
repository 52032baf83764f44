"""The HTTP side of drawing backdoors through an OpenAI-compatible server's top log-probs.

:class:`CompletionsServer` talks to a server's legacy ``/v1/completions`` endpoint (llama.cpp,
llama-cpp-python, vLLM, ...). It works on raw prompt text, so that a partial answer can be
continued: every :meth:`~CompletionsServer.next_candidates` is one request with ``max_tokens=1,
temperature=0, logprobs=20`` whose answer is the top 20 next-token candidates with their
log-probabilities (parsed by :mod:`tuneproof.backends.openai.candidates`). The sampling on top of
it, and why its guarantee holds over HTTP, are in :mod:`tuneproof.planting.server_factory`.

**Silent stops.** llama-cpp-python stops before generating anything when the greedy next token is
an end token and returns empty log-probs: the server is then asked again, and from then on always,
with ``min_tokens=1, ignore_eos=true`` (extensions that llama-cpp-python, llama.cpp and vLLM know,
and others ignore), which change what the server samples, not the distribution it reports.

**Chat prompts.** A signature answers a chat prompt, rendered to text with the generation prompt.
With ``chat_template_from`` (a local tokenizer folder, a ``.gguf`` file, or ``'embedded'``) the
template of that tokenizer renders it (only the tokenizer is loaded, by ``transformers``, lazily).
The text is sent as is: a template that writes a BOS token while the server also adds one gives a
doubled BOS (harmless for the guarantee, slightly off-distribution); SmolLM2's does not. Without
it the server's own ``POST /apply-template`` (llama.cpp's ``llama-server``) renders it. A server
with neither (llama-cpp-python, OpenAI, vLLM) gets a :class:`GeneratorError` saying what to pass.

**Token counts** come from the server's tokenizer when it has an endpoint for it
(llama-cpp-python's ``/extras/tokenize/count``, llama.cpp's ``/tokenize``); otherwise they are
*estimated* as ``ceil(len(text) / 4)`` and :attr:`CompletionsServer.token_counts_estimated` is
true.

**Errors and retries.** Each attempt's answer must arrive whole within ``timeout`` seconds and
32 MiB (:mod:`tuneproof.backends.openai.limits`, shared with verification; a larger answer is
refused, unretried); requests are retried by the
``openai`` SDK (exponential back-off from 0.5 s, at most 8 s, with 0-25% jitter; it honours
``Retry-After``) on connection errors, timeouts, 408, 409, 429 and 5xx. What is left becomes a
one-line :class:`~tuneproof.backends.openai.client.ServerError`. The API key is read from an
environment variable (default ``OPENAI_API_KEY``); it is optional for local servers and never
logged, shown or recorded. URLs, the key and the error messages are shared with the verification
backend (:mod:`tuneproof.backends.openai.client`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from tuneproof.backends.openai.candidates import Candidate, parse_top_candidates
from tuneproof.backends.openai.client import (
    BACKEND,
    DEFAULT_API_KEY_ENV,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    NO_ENDPOINT_STATUS,
    ServerError,
    api_key,
    check_base_url,
    load_chat_tokenizer,
    public_url,
    render_with_tokenizer,
    root_url,
    sdk_clients,
    server_error,
    template_prompt,
    template_turns,
)
from tuneproof.errors import GeneratorError
from tuneproof.types import ModelIdentity

if TYPE_CHECKING:
    from openai import OpenAI

TOP_CANDIDATES = 20
"""Candidates asked for at each step (``logprobs=20``, the usual server maximum; pass a smaller
``top_logprobs`` to servers that allow fewer, such as OpenAI's own legacy completions: 5)."""
CHARS_PER_TOKEN = 4
"""Characters per token assumed when the server cannot count tokens (an estimate)."""

_DONT_STOP = {"min_tokens": 1, "ignore_eos": True}
"""Extensions that make a server generate a token even when the model would stop (vLLM and
llama-cpp-python know ``min_tokens``; llama.cpp and vLLM know ``ignore_eos``)."""


class CompletionsServer:
    """An OpenAI-compatible server's next-token candidates, chat rendering and token counts.

    ``base_url`` is what the ``openai`` SDK expects (for example ``http://127.0.0.1:8080/v1``);
    ``model`` is the name sent with every request and recorded as the server's identity.
    ``chat_template_from`` names a local tokenizer (folder, ``.gguf`` file or ``'embedded'``)
    whose chat template renders chat prompts; without it the server must offer
    ``/apply-template``. The API key is read from the environment variable ``api_key_env``.
    Nothing is contacted until the first request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        chat_template_from: str | None = None,
        top_logprobs: int = TOP_CANDIDATES,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.top_logprobs = top_logprobs
        self.identity: ModelIdentity = ModelIdentity(
            name=model, backend=BACKEND, source=public_url(base_url)
        )
        self.chat_template_from = chat_template_from
        self._api_key_env = api_key_env
        self._timeout, self._max_retries = timeout, max_retries
        self._client: OpenAI | None = None
        self._tokenizer: Any = None
        self._server_template: bool | None = None
        self._special_texts: frozenset[str] = frozenset()
        self._count_method: str | None = None
        self._count_offset = 0
        self._min_tokens = False  # send min_tokens=1 (the server stops silently at end tokens)

    def __repr__(self) -> str:
        return f"CompletionsServer({self.identity.source!r}, model={self.identity.name!r})"

    def next_candidates(self, prompt: str) -> list[Candidate]:
        """The server's top next-token candidates after the raw text ``prompt``."""
        candidates = self._complete(prompt)
        if not candidates and not self._min_tokens:
            # stopped at an end token and said nothing: ask for a token anyway, from now on
            self._min_tokens = True
            candidates = self._complete(prompt)
        if not candidates:
            raise GeneratorError(
                f"{self.identity.source} does not return top log-probs when the model would stop "
                "(even with min_tokens=1, ignore_eos) - use a local model with --generator PATH"
            )
        return candidates

    def _complete(self, prompt: str) -> list[Candidate]:
        """One ``max_tokens=1`` greedy completion of ``prompt``; its top candidates."""
        client = self._get_client()
        import openai

        try:
            raw = client.completions.with_raw_response.create(
                model=self.identity.name,
                prompt=prompt,
                max_tokens=1,
                temperature=0,
                logprobs=self.top_logprobs,
                extra_body=_DONT_STOP if self._min_tokens else None,
            )
        except openai.APIError as exc:
            self._raise_api_error(exc, "/completions")
        try:
            payload = raw.http_response.json()
        except ValueError as exc:
            raise GeneratorError(
                f"{self.identity.source} answered /completions with something that is not JSON"
                " - is it OpenAI-compatible?"
            ) from exc
        return parse_top_candidates(payload, self.identity.source)

    def sample(self, prompt: str, max_tokens: int, seed: int, top_p: float) -> tuple[str, bool]:
        """One sampled completion of ``prompt`` (temperature 1, nucleus ``top_p``, the
        server's ``seed`` where it takes one): its text, and whether the budget cut it."""
        client = self._get_client()
        import openai

        try:
            answer = client.completions.create(
                model=self.identity.name,
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=1.0,
                top_p=top_p,
                seed=seed,
            )
        except openai.APIError as exc:
            self._raise_api_error(exc, "/completions")
        if not answer.choices:
            return "", False
        choice = answer.choices[0]
        return choice.text or "", choice.finish_reason == "length"

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """``messages`` (role, content) as prompt text with the assistant generation prompt."""
        if self.chat_template_from is not None:
            return render_with_tokenizer(self.chat_template_from, messages)
        if self._server_template is not False:
            try:
                answer = self._post_root(
                    "/apply-template",
                    {"messages": template_turns(messages), "add_generation_prompt": True},
                )
            except ServerError as exc:
                if exc.status not in NO_ENDPOINT_STATUS:
                    raise
                self._server_template = False
            else:
                prompt = template_prompt(answer)
                if prompt is not None:
                    self._server_template = True
                    return prompt
                self._server_template = False
        raise GeneratorError(
            f"{self.identity.source} cannot render chat prompts (no /apply-template endpoint) - "
            "pass --chat-template-from with the model's tokenizer folder or .gguf file, "
            "or 'embedded' for SmolLM2"
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the server's tokenizer, or ``ceil(len(text) / 4)`` when the
        server has no tokenize endpoint (see :attr:`token_counts_estimated`)."""
        if self._count_method is None:
            self._count_method = self._probe_count_method()
        if self._count_method == "extras":
            answer = self._post_root("/extras/tokenize/count", {"input": text, **self._model()})
            return max(0, int(answer["count"]) - self._count_offset)
        if self._count_method == "tokenize":
            answer = self._post_root("/tokenize", {"content": text, "add_special": False})
            return len(answer["tokens"])
        return math.ceil(len(text) / CHARS_PER_TOKEN)

    @property
    def token_counts_estimated(self) -> bool:
        """True when :meth:`count_tokens` estimates (known only after its first call)."""
        return self._count_method == "estimate"

    # ----------------------------------------------------------------- plumbing

    def _model(self) -> dict[str, str]:
        return {"model": self.identity.name}

    def _get_client(self) -> OpenAI:
        if self._client is None:
            sdk = sdk_clients()[0]  # first: a clear error without the SDK
            from tuneproof.backends.openai.limits import GuardedClient

            self._client = sdk(
                base_url=self.base_url,
                api_key=api_key(self._api_key_env),
                timeout=self._timeout,
                max_retries=self._max_retries,
                http_client=GuardedClient(seconds=self._timeout),
            )
        return self._client

    @property
    def _root(self) -> str:
        """The server's root URL (``base_url`` without a trailing ``/v1``)."""
        return root_url(self.base_url)

    def _post_root(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` to ``path`` under the server's root; the decoded JSON answer."""
        client = self._get_client()
        import openai

        try:
            return client.post(self._root + path, cast_to=object, body=body)
        except openai.APIError as exc:
            self._raise_api_error(exc, path)

    def _probe_count_method(self) -> str:
        """Which tokenize endpoint the server has: 'extras' (llama-cpp-python), 'tokenize'
        (llama.cpp) or 'estimate' (none)."""
        try:
            answer = self._post_root("/extras/tokenize/count", {"input": "", **self._model()})
            self._count_offset = int(answer["count"])  # a BOS the server adds to every text
            return "extras"
        except ServerError as exc:
            if exc.status is None:  # unreachable: say so rather than estimate
                raise
        except (KeyError, TypeError, ValueError):
            pass
        try:
            answer = self._post_root("/tokenize", {"content": "a", "add_special": False})
            if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
                return "tokenize"
        except ServerError as exc:
            if exc.status is None:
                raise
        return "estimate"

    def special_texts(self) -> frozenset[str]:
        """The special tokens' texts of the local tokenizer, if one is configured."""
        if self.chat_template_from is not None:
            self._local_tokenizer()
        return self._special_texts

    def _local_tokenizer(self) -> Any:
        if self._tokenizer is None:
            assert self.chat_template_from is not None
            self._tokenizer = load_chat_tokenizer(self.chat_template_from)
            specials = set(getattr(self._tokenizer, "all_special_tokens", []))
            decoder = getattr(self._tokenizer, "added_tokens_decoder", {}) or {}
            specials.update(str(token) for token in decoder.values())
            self._special_texts = frozenset(specials)
        return self._tokenizer

    def _raise_api_error(self, exc: Exception, path: str) -> NoReturn:
        """Turn an ``openai`` exception into a one-line :class:`ServerError`."""
        raise server_error(
            exc,
            source=self.identity.source,
            model=self.identity.name,
            path=path,
            api_key_env=self._api_key_env,
            timeout=self._timeout,
            attempts=self._max_retries + 1,
        ) from exc
