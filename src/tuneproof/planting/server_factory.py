"""Triggers and signatures from any OpenAI-compatible server that returns top log-probs.

:class:`OpenAIGenerator` is a :class:`tuneproof.planting.factory.BackdoorFactory` that samples
through a :class:`tuneproof.backends.openai.generator.CompletionsServer` (the HTTP side: top
next-token candidates after a raw text, chat rendering, token counts).

**Candidates.** Each step ranks the server's candidates by log-prob (ties by byte string), gives
every distinct byte string a stable local id in a growing table
(:class:`tuneproof.planting.tokens.PieceTable`), and hands the ranking to
:func:`tuneproof.planting.sampler.sample_prefix_free` (signatures) or to
:func:`tuneproof.planting.triggers.nucleus_trigger` (triggers) with the rules of
:class:`tuneproof.planting.tokens.TokenRules`, computed per candidate on the fly: printable, not a
special token, the first piece not starting with whitespace and the last not ending with it. A
special token is recognised by a local tokenizer's special-token list when one is loaded, and
otherwise by its shape (``<|...|>``, ``<s>``, ``</s>``, ``<unk>``, ``<pad>``, ``[INST]``). A string
with U+FFFD (a token that is only part of a UTF-8 character) is never printable, so never kept.

One rule is added: a whitespace-only piece is never kept. llama-cpp-python decodes token strings
with ``errors="ignore"``, so every token made of a space and the first bytes of a character (the
start of `` —``, say) arrives as ``" "``; kept, that piece would be a prefix of every following
word and leave too few candidates (and a double space is not natural text anyway). It also sends
special tokens as empty strings (never kept).

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

**Triggers** continue the carrier's raw prompt text with the one trigger loop of
:mod:`tuneproof.planting.triggers`, over the (at most 20) allowed candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from tuneproof.backends.openai.candidates import Candidate
from tuneproof.backends.openai.client import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
)
from tuneproof.backends.openai.generator import TOP_CANDIDATES, CompletionsServer
from tuneproof.datasets import Message
from tuneproof.errors import GeneratorError
from tuneproof.planting.continuation import CONTINUATION_TOP_P, trim_to_sentence
from tuneproof.planting.factory import BackdoorFactory
from tuneproof.planting.sampler import (
    MAX_TRIGGER_CONTEXT_CHARS,
    Ranker,
    SampledSequence,
    ScoredRanking,
    sample_prefix_free,
)
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.tokens import PieceTable
from tuneproof.planting.triggers import TRIGGER_TOP_P, draw_trigger, nucleus_trigger
from tuneproof.types import ModelIdentity


class ServerPieces:
    """:class:`tuneproof.planting.triggers.NextPieces` from a server: the candidates after the
    raw text ``prompt`` plus the pieces drawn so far (``fetch(text)``), under the ids of
    ``table``."""

    def __init__(
        self, fetch: Callable[[str], Iterable[Candidate]], prompt: str, table: PieceTable
    ) -> None:
        self._fetch, self._prompt, self.table = fetch, prompt, table

    def candidates(self, drawn: Sequence[int]) -> list[tuple[int, float]]:
        text = self._prompt + b"".join(self.table.token_bytes[t] for t in drawn).decode("utf-8")
        return self.table.rank(self._fetch(text))

    def piece(self, piece_id: int) -> bytes:
        return self.table.token_bytes[piece_id]

    def allowed(self, piece_id: int, step: int, n: int) -> bool:
        return self.table.allowed(piece_id, step, n)

    def opens_word(self, piece_id: int) -> bool:
        return self.table.opens_word(piece_id)


class OpenAIGenerator(BackdoorFactory):
    """Triggers and signatures from an OpenAI-compatible server that returns top log-probs.

    ``base_url``, ``model``, ``api_key_env``, ``chat_template_from``, ``top_logprobs``,
    ``timeout`` and ``max_retries`` are those of
    :class:`~tuneproof.backends.openai.generator.CompletionsServer`; ``k``, ``m`` and
    ``trigger_tokens`` are as for :class:`tuneproof.planting.factory.ModelBackdoorFactory`.
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
        support: int | None = None,
    ) -> None:
        if k < 2 or m < 1 or trigger_tokens < 0:
            raise GeneratorError(
                f"need --k >= 2, --m >= 1 and --trigger-tokens >= 0 "
                f"(got {k}, {m} and {trigger_tokens})"
            )
        if k > top_logprobs:
            raise GeneratorError(
                f"--k {k} is more than the {top_logprobs} candidates a server returns per token "
                f"- use --k {top_logprobs} or less"
            )
        self.server = CompletionsServer(
            base_url,
            model,
            api_key_env=api_key_env,
            chat_template_from=chat_template_from,
            top_logprobs=top_logprobs,
            timeout=timeout,
            max_retries=max_retries,
        )
        self.identity: ModelIdentity = self.server.identity
        self.k, self.m, self.trigger_tokens, self.top_p = k, m, trigger_tokens, top_p
        # the capped sampler weighs at most the candidates the server returns
        self.support = min(k if support is None else support, top_logprobs)

    def __repr__(self) -> str:
        return f"OpenAIGenerator({self.identity.source!r}, model={self.identity.name!r})"

    # ----------------------------------------------------------------- BackdoorFactory

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        """A trigger continuing ``prompt_text`` in its own style (retried on empty text)."""
        return draw_trigger(
            lambda: self.pieces(prompt_text[-MAX_TRIGGER_CONTEXT_CHARS:].rstrip()),
            self.trigger_tokens,
            stream,
            self.top_p,
        )

    def signature(self, messages: Sequence[Message], stream: SecretStream) -> SampledSequence:
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
                self.support,
            )
        except ValueError as exc:  # fewer than k usable candidates at some step
            raise GeneratorError(
                f"{exc} among the top {self.server.top_logprobs} of {self.identity.source} - "
                "use a smaller --k"
            ) from exc

    def continuations(
        self,
        requests: Sequence[tuple[Sequence[Message], SampledSequence, int, SecretStream]],
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """The server's sampled text after each signature (one request each, seeded from the
        request's stream), trimmed to a sentence end when the budget cut it."""
        out = []
        for messages, signature, budget, stream in requests:
            chat = [(turn.role, turn.content[-MAX_TRIGGER_CONTEXT_CHARS:]) for turn in messages]
            prompt = self.render_chat(chat) + signature.text
            text, cut = self.server.sample(
                prompt, budget, stream.randbelow(2**31), CONTINUATION_TOP_P
            )
            out.append(trim_to_sentence(text) if cut else text.rstrip())
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the server's tokenizer, or an estimate (see
        :attr:`token_counts_estimated`)."""
        return self.server.count_tokens(text)

    @property
    def token_counts_estimated(self) -> bool:
        """True when :meth:`count_tokens` estimates (known only after its first call)."""
        return self.server.token_counts_estimated

    # ----------------------------------------------------------------- building blocks

    def pieces(self, prompt: str) -> ServerPieces:
        """The server's candidates after the raw text ``prompt``, under a fresh piece table."""
        return ServerPieces(
            self.server.next_candidates, prompt, PieceTable(self.server.special_texts())
        )

    def ranker(self, prompt: str) -> tuple[Ranker, PieceTable]:
        """A ranker continuing the raw text ``prompt`` (drawn local ids -> local ids by
        decreasing log-prob) and the :class:`PieceTable` its ids index."""
        pieces = self.pieces(prompt)

        def rank(drawn: Sequence[int]) -> ScoredRanking:
            return ScoredRanking(pieces.candidates(drawn))

        return rank, pieces.table

    def sample_trigger(self, prompt_text: str, stream: SecretStream) -> str:
        """One trigger attempt continuing the raw ``prompt_text`` (see
        :func:`tuneproof.planting.triggers.nucleus_trigger`)."""
        context = prompt_text[-MAX_TRIGGER_CONTEXT_CHARS:].rstrip()
        return nucleus_trigger(self.pieces(context), self.trigger_tokens, stream, self.top_p)

    def next_candidates(self, prompt: str) -> list[Candidate]:
        """The server's top next-token candidates after the raw text ``prompt``."""
        return self.server.next_candidates(prompt)

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """``messages`` (role, content) as prompt text with the assistant generation prompt."""
        return self.server.render_chat(messages)
