"""Triggers and signatures from any OpenAI-compatible server that returns top log-probs.

:class:`OpenAIGenerator` is a :class:`tuneproof.planting.planter.BackdoorFactory` backed by a
server's
legacy ``/v1/completions`` endpoint (llama.cpp, llama-cpp-python, vLLM, ...). It works on raw
prompt text, so that a partial answer can be continued: every step is one request with
``max_tokens=1, temperature=0, logprobs=20`` whose answer is the top 20 next-token candidates with
their log-probabilities.

**Candidates** are parsed and ranked by :mod:`tuneproof.backends.openai.candidates` (the
server's token strings or bytes, a stable local id per distinct piece, the sampler's rules).

**Why the uniform-over-K^m, prefix-free guarantee still holds.** The server re-tokenises the
prompt plus the pieces chosen so far at every step, so the pieces need not be the tokens the model
would have produced. That does not matter: the guarantee is about strings, not tokens.

- At each step the candidate set is a deterministic function of the text so far, hence of the
  path so far; the sampler keeps ``k`` mutually non-prefix byte strings from it and picks one with
  a fresh, uniform draw of the secret stream. Each of the ``k**m`` paths has probability exactly
  ``k**-m``; two different paths first differ at a step where they appended two different kept
  strings of the *same* set after the *same* text, neither a prefix of the other, so their final
  strings differ there and neither is a prefix of the other.
- The model-free bound needs even less. For a fixed answer ``o`` and start position, at most one
  kept string of any step's set can be a prefix of what remains of ``o`` (two such strings would be
  prefixes of each other), so the draw follows ``o`` with probability at most ``1/k`` at every
  step: ``P[S occurs at that position] <= k**-m``. This holds whatever the server does between
  steps (re-tokenisation, cache reuse, even non-deterministic logits), as long as it never sees
  the secret stream, which it does not: it only sees text.

**Chat prompts.** A signature answers a chat prompt, rendered to text with the generation prompt.
With ``chat_template_from`` (a local tokenizer folder, a ``.gguf`` file, or ``'embedded'``) the
template of that tokenizer renders it (only the tokenizer is loaded, by ``transformers``, lazily).
The text is sent as is: a template that writes a BOS token while the server also adds one gives a
doubled BOS (harmless for the guarantee, slightly off-distribution); SmolLM2's does not. Without
it the server's own ``POST /apply-template`` (llama.cpp's ``llama-server``) renders it. A server
with neither (llama-cpp-python, OpenAI, vLLM) gets a :class:`GeneratorError` saying what to pass.

**Triggers** continue the carrier's raw prompt text with nucleus sampling over the (at most 20)
allowed candidates, driven by the secret stream, exactly like
:func:`tuneproof.planting.sampler.sample_trigger`.

**Token counts** come from the server's tokenizer when it has an endpoint for it
(llama-cpp-python's ``/extras/tokenize/count``, llama.cpp's ``/tokenize``); otherwise they are
*estimated* as ``ceil(len(text) / 4)`` and :attr:`OpenAIGenerator.token_counts_estimated` is true.

**Errors and retries.** Requests time out after ``timeout`` seconds and are retried by the
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
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import numpy as np

from tuneproof.backends.openai.candidates import Candidate, PieceTable, parse_top_candidates
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
    server_error,
    template_prompt,
    template_turns,
)
from tuneproof.errors import GeneratorError
from tuneproof.planting.sampler import (
    MAX_TRIGGER_CONTEXT_CHARS,
    Ranker,
    SampledSequence,
    SecretStream,
    sample_prefix_free,
    trim_to_boundary,
)
from tuneproof.types import ModelIdentity

if TYPE_CHECKING:
    from openai import OpenAI

TOP_CANDIDATES = 20
"""Candidates asked for at each step (``logprobs=20``, the usual server maximum; pass a smaller
``top_logprobs`` to servers that allow fewer, such as OpenAI's own legacy completions: 5)."""
TRIGGER_TOP_P = 0.9
TRIGGER_ATTEMPTS = 8
CHARS_PER_TOKEN = 4
"""Characters per token assumed when the server cannot count tokens (an estimate)."""

_DONT_STOP = {"min_tokens": 1, "ignore_eos": True}
"""Extensions that make a server generate a token even when the model would stop (vLLM and
llama-cpp-python know ``min_tokens``; llama.cpp and vLLM know ``ignore_eos``)."""


class _Turn(Protocol):
    """A chat turn (``tuneproof.datasets.Message`` or anything with the same fields)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


# --------------------------------------------------------------------------- the generator


class OpenAIGenerator:
    """Triggers and signatures from an OpenAI-compatible server that returns top log-probs.

    ``base_url`` is what the ``openai`` SDK expects (for example ``http://127.0.0.1:8080/v1``);
    ``model`` is the name sent with every request and recorded as the generator's identity. ``k``,
    ``m`` and ``trigger_tokens`` are as for
    :class:`tuneproof.planting.planter.ModelBackdoorFactory`.
    ``chat_template_from`` names a local tokenizer (folder, ``.gguf`` file or ``'embedded'``)
    whose chat template renders signature prompts; without it the server must offer
    ``/apply-template``. The API key is read from the environment variable ``api_key_env``.
    Nothing is contacted until the first trigger, signature or token count.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        k: int,
        m: int,
        trigger_tokens: int,
        *,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        chat_template_from: str | None = None,
        top_logprobs: int = TOP_CANDIDATES,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        top_p: float = TRIGGER_TOP_P,
    ) -> None:
        if k < 2 or m < 1 or trigger_tokens < 1:
            raise GeneratorError(
                f"need --k >= 2, --m >= 1 and --trigger-tokens >= 1 "
                f"(got {k}, {m} and {trigger_tokens})"
            )
        if k > top_logprobs:
            raise GeneratorError(
                f"--k {k} is more than the {top_logprobs} candidates a server returns per token "
                f"- use --k {top_logprobs} or less"
            )
        self.base_url = check_base_url(base_url)
        self.k, self.m, self.trigger_tokens = k, m, trigger_tokens
        self.top_logprobs, self.top_p = top_logprobs, top_p
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
        return f"OpenAIGenerator({self.identity.source!r}, model={self.identity.name!r})"

    # ----------------------------------------------------------------- BackdoorFactory

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        """A trigger continuing ``prompt_text`` in its own style (retried on empty text)."""
        for attempt in range(TRIGGER_ATTEMPTS):
            text = self.sample_trigger(prompt_text, stream.child(str(attempt)))
            if text:
                return text
        raise GeneratorError(
            f"the generator produced no usable trigger text after {TRIGGER_ATTEMPTS} attempts"
        )

    def signature(self, messages: Sequence[_Turn], stream: SecretStream) -> SampledSequence:
        """A prefix-free signature drawn as the model's answer to ``messages``."""
        # only the end of a long turn matters for style; never send a 50 MB turn
        chat = [(turn.role, turn.content[-MAX_TRIGGER_CONTEXT_CHARS:]) for turn in messages]
        ranker, table = self.ranker(self.render_chat(chat))
        try:
            return sample_prefix_free(
                ranker,
                table.token_bytes,
                self.k,
                self.m,
                stream,
                lambda token_id, step: table.allowed(token_id, step, self.m),
            )
        except ValueError as exc:  # fewer than k usable candidates at some step
            raise GeneratorError(
                f"{exc} among the top {self.top_logprobs} of {self.identity.source} - "
                "use a smaller --k"
            ) from exc

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

    # ----------------------------------------------------------------- building blocks

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

    def ranker(self, prompt: str) -> tuple[Ranker, PieceTable]:
        """A ranker continuing the raw text ``prompt`` (drawn local ids -> local ids by
        decreasing log-prob) and the :class:`PieceTable` its ids index."""
        table = PieceTable(self._specials())

        def rank(drawn: Sequence[int]) -> list[int]:
            text = prompt + b"".join(table.token_bytes[t] for t in drawn).decode("utf-8")
            return [token_id for token_id, _ in table.rank(self.next_candidates(text))]

        return rank, table

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

    def sample_trigger(self, prompt_text: str, stream: SecretStream) -> str:
        """One trigger attempt: ``trigger_tokens`` pieces of nucleus sampling (``top_p``) over
        the allowed candidates, continuing the raw ``prompt_text``, trimmed to a boundary. The
        first piece must open a new word (a space and an ASCII letter), as in
        :func:`tuneproof.planting.sampler.sample_trigger`."""
        context = prompt_text[-MAX_TRIGGER_CONTEXT_CHARS:].rstrip()
        table = PieceTable(self._specials())
        pieces: list[bytes] = []
        n = self.trigger_tokens
        for step in range(n):
            text = context + b"".join(pieces).decode("utf-8")
            ranked = table.rank(self.next_candidates(text))
            keep = [
                (t, logprob)
                for t, logprob in ranked
                if (table.allowed(t, step, n) if step else table.opens_word(t))
            ]
            if not keep:
                break
            logprobs = np.array([logprob for _, logprob in keep], dtype=np.float64)
            probs = np.exp(logprobs - logprobs.max())
            probs /= probs.sum()
            cutoff = min(len(keep), int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1)
            probs = probs[:cutoff] / probs[:cutoff].sum()
            u = stream.random()
            index = min(int(np.searchsorted(np.cumsum(probs), u, side="right")), cutoff - 1)
            pieces.append(table.token_bytes[keep[index][0]])
        return trim_to_boundary(b"".join(pieces).decode("utf-8").strip())

    # ----------------------------------------------------------------- plumbing

    def _model(self) -> dict[str, str]:
        return {"model": self.identity.name}

    def _get_client(self) -> OpenAI:
        if self._client is None:
            try:
                from openai import OpenAI
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise GeneratorError(
                    "OpenAI-compatible generators need the 'openai' extra - "
                    "run `pip install 'tuneproof[openai]'`"
                ) from exc
            self._client = OpenAI(
                base_url=self.base_url,
                api_key=api_key(self._api_key_env),
                timeout=self._timeout,
                max_retries=self._max_retries,
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

    def _specials(self) -> frozenset[str]:
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
