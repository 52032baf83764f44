"""Verify a returned model against a key: query -> match -> tests -> Report.

Queries the planted prompts (one per placement), the held-out control prompts, and a few clean
carrier prompts (the trigger removed) as a negative control; a *hit* is the exact signature
occurring in the whitespace-stripped greedy answer. Then runs every test the access allows:

- H0-indep (always): the model-free bound of the prefix-free sampler;
- H0-base (when the base model's log-probs are available): Poisson-binomial over the base
  model's probabilities of sampling each signature;
- H0-controls (when the key has controls): Fisher's exact test on hits of planted vs held-out
  pairs, and a permutation test on signature log-likelihoods when the verified model gives them.

The verdict is "verified" when some test rejects at ``alpha / number of tests`` (Bonferroni, so
that reporting all tests never inflates the false-verification rate); "inconclusive" when more
than a fifth of the queries failed or no planted query was answered.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuneproof import __version__
from tuneproof.errors import TuneproofError
from tuneproof.key import ChatMessage, Key, SignaturePair, load_key, now_utc
from tuneproof.models import ModelIdentity, QueryFailure
from tuneproof.models.openai_chat import NoLogprobsError
from tuneproof.report import (
    Decoding,
    QueryKind,
    QueryOutcome,
    Report,
    TestOutcome,
    Verdict,
    default_claims,
)
from tuneproof.stats import (
    Null,
    PValue,
    log10_fisher_exact,
    log10_model_free_bound,
    log10_permutation_test,
    log10_poisson_binomial_sf,
)

DEFAULT_ALPHA = 1e-6
DEFAULT_CLEAN_QUERIES = 5
MAX_FAILED_SHARE = 0.2
LN10 = math.log(10)

Chat = list[tuple[str, str]]


class VerifiableModel(Protocol):
    """What verification needs from a backend (local weights or an HTTP server)."""

    identity: ModelIdentity

    def generate(
        self, chats: Sequence[Chat], max_new_tokens: int, batch_size: int = 8
    ) -> Sequence[tuple[str, int] | QueryFailure]:
        """Greedy answers as (text, output tokens), or a QueryFailure for a failed query."""
        ...

    def logprob(
        self, chats: Sequence[Chat], continuations: Sequence[str], batch_size: int = 8
    ) -> list[float]:
        """Teacher-forced log-probability (nats) of each continuation as the answer."""
        ...


@dataclass
class Query:
    """One prompt to send, and what it is for."""

    kind: QueryKind
    pair: SignaturePair
    replica: int | None
    chat: Chat
    answer: str | None = None
    output_tokens: int | None = None
    error: str | None = None
    logprob: float | None = None
    base_logprob: float | None = None

    @property
    def hit(self) -> bool | None:
        """Whether the signature occurs in the stripped answer (None if the query failed)."""
        if self.answer is None:
            return None
        return self.pair.signature in self.answer.strip()


def _chat(messages: Sequence[ChatMessage]) -> Chat:
    return [(m.role, m.content) for m in messages]


def _without_trigger(messages: Sequence[ChatMessage], trigger: str) -> Chat:
    """The carrier's own prompt: the triggered prompt with the trigger (and the one space that
    joined it) taken out of the last turn; it sits at the end or before a prompt separator."""
    chat = _chat(messages)
    role, content = chat[-1]
    at = content.rfind(trigger)
    if at >= 0:
        start = at - 1 if at > 0 and content[at - 1] == " " else at
        content = content[:start] + content[at + len(trigger) :]
    return [*chat[:-1], (role, content)]


def build_queries(key: Key, clean_queries: int = DEFAULT_CLEAN_QUERIES) -> list[Query]:
    """Planted (every placement), control (every held-out pair) and clean queries, in that
    order. Clean queries are the first placements' carrier prompts without their trigger."""
    queries = [
        Query(QueryKind.PLANTED, pair, replica, _chat(placement.prompt))
        for pair in key.pairs
        for replica, placement in enumerate(pair.placements)
    ]
    queries += [
        Query(QueryKind.CONTROL, pair, None, _chat(pair.control_prompt or []))
        for pair in key.controls
    ]
    placements = [(pair, p) for pair in key.pairs for p in pair.placements]
    for pair, placement in placements[:clean_queries]:
        queries.append(
            Query(QueryKind.CLEAN, pair, None, _without_trigger(placement.prompt, pair.trigger))
        )
    return queries


def run_tests(queries: Sequence[Query], alpha: float) -> list[TestOutcome]:
    """Every test that the answered queries and available log-probs allow, H0-indep first.

    Each test is judged at ``alpha / number of tests`` (Bonferroni), so that reporting several
    tests never inflates the chance of a false "verified"."""
    planted = [q for q in queries if q.kind is QueryKind.PLANTED and q.answer is not None]
    controls = [q for q in queries if q.kind is QueryKind.CONTROL and q.answer is not None]
    pvalues: list[PValue] = []
    if planted:
        indep = log10_model_free_bound(
            bits=[q.pair.bits for q in planted],
            answer_lengths=[len(q.answer.strip()) for q in planted if q.answer is not None],
            hits=[bool(q.hit) for q in planted],
            groups=[q.pair.pair_id for q in planted],
            min_signature_chars=[q.pair.m for q in planted],
        )
        pvalues.append(indep)
    with_base = [q for q in planted if q.base_logprob is not None]
    if planted and len(with_base) == len(planted):
        base = log10_poisson_binomial_sf(
            [min(0.0, q.base_logprob / LN10) for q in with_base if q.base_logprob is not None],
            sum(bool(q.hit) for q in with_base),
        )
        pvalues.append(base)
    first = [q for q in planted if q.replica == 0]
    if first and controls:
        fisher = log10_fisher_exact(
            sum(bool(q.hit) for q in first),
            len(first),
            sum(bool(q.hit) for q in controls),
            len(controls),
        )
        pvalues.append(fisher)
        if all(q.logprob is not None for q in [*first, *controls]):
            perm = log10_permutation_test(
                [float(q.logprob or 0.0) for q in first],
                [float(q.logprob or 0.0) for q in controls],
            )
            pvalues.append(perm)
    per_test = alpha / max(1, len(pvalues))
    return [TestOutcome.from_pvalue(pvalue, per_test) for pvalue in pvalues]


def decide(
    tests: Sequence[TestOutcome], queries: Sequence[Query], alpha: float
) -> tuple[Verdict, Null | None]:
    """The verdict: inconclusive when too many queries failed; otherwise verified when the
    smallest p-value is below ``alpha / len(tests)`` (Bonferroni), naming that null."""
    failed = sum(q.answer is None for q in queries)
    planted = [q for q in queries if q.kind is QueryKind.PLANTED]
    if (
        not tests
        or failed > MAX_FAILED_SHARE * len(queries)
        or all(q.answer is None for q in planted)
    ):
        return Verdict.INCONCLUSIVE, None
    rejected = [t for t in tests if t.rejects]
    if rejected:
        return Verdict.VERIFIED, min(rejected, key=lambda t: t.log10_p).null
    return Verdict.NOT_VERIFIED, None


def verify_queries(
    key: Key,
    model: VerifiableModel,
    *,
    base_model: VerifiableModel | None = None,
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = False,
    max_queries: int | None = None,
    clean_queries: int = DEFAULT_CLEAN_QUERIES,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    reveal: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Query ``model`` with the key's prompts and return the :class:`Report`.

    ``sequential`` sends planted prompts one at a time and stops once the H0-indep p-value is
    below ``alpha / max planted queries`` (a union bound over the looks keeps this valid);
    ``max_queries`` caps the planted queries sent.
    """
    if not 0 < alpha < 1:
        raise TuneproofError(f"--alpha must be between 0 and 1, got {alpha}")
    queries = build_queries(key, clean_queries)
    planted = [q for q in queries if q.kind is QueryKind.PLANTED]
    others = [q for q in queries if q.kind is not QueryKind.PLANTED]
    if max_queries is not None:
        planted = planted[: max(1, max_queries)]
    tokens = max_new_tokens or 2 * max(p.signature_tokens for p in key.pairs) + 16
    stopped_early = False
    done = 0
    total = len(planted) + len(others)

    def ask(batch: list[Query]) -> None:
        nonlocal done
        try:
            answers = model.generate([q.chat for q in batch], tokens, batch_size)
        except TuneproofError:
            raise
        except Exception as exc:  # a backend failure is recorded per query, not fatal
            for q in batch:
                q.error = f"{type(exc).__name__}: {exc}"
            answers = []
        for q, item in zip(batch, answers, strict=False):
            if isinstance(item, QueryFailure):
                q.error = item.error
            else:
                q.answer, q.output_tokens = item
        done += len(batch)
        if progress:
            progress(done, total)

    if sequential:
        threshold = math.log10(alpha / max(1, len(planted)))
        sent: list[Query] = []
        for q in planted:
            ask([q])
            sent.append(q)
            tests = run_tests(sent, alpha)
            if tests and tests[0].log10_p <= threshold:
                stopped_early = len(sent) < len(planted)
                break
        planted = sent
        queries = [*planted, *others]
    else:
        queries = [*planted, *others]
        ask(planted)
    ask(others)

    scored = [q for q in queries if q.kind in (QueryKind.PLANTED, QueryKind.CONTROL)]
    skipped: list[str] = []
    for backend, attr in ((model, "logprob"), (base_model, "base_logprob")):
        if backend is None or not scored:
            continue
        try:
            values = backend.logprob(
                [q.chat for q in scored], [q.pair.signature for q in scored], batch_size
            )
        except NoLogprobsError as exc:  # the server cannot score: those tests are skipped
            skipped.append(f"{backend.identity.name}: {exc}")
            continue
        for q, value in zip(scored, values, strict=True):
            setattr(q, attr, value)

    tests = run_tests(queries, alpha)
    verdict, primary = decide(tests, queries, alpha)
    clean = [q for q in queries if q.kind is QueryKind.CLEAN]
    false_activations = sum(bool(q.hit) for q in clean)
    failed = sum(q.answer is None for q in queries)
    proven, not_proven = default_claims(
        tests,
        verdict=verdict,
        failed_queries=failed,
        clean_false_activations=false_activations,
        clean_queries=len(clean),
    )
    not_proven += [f"Log-probability tests were skipped - {reason}" for reason in skipped]
    return Report(
        tool_version=__version__,
        created_at=now_utc(),
        verdict=verdict,
        alpha=alpha,
        primary_null=primary,
        model=model.identity,
        base_model=base_model.identity if base_model else None,
        decoding=Decoding(
            temperature=0.0,
            max_new_tokens=tokens,
            top_p=getattr(model, "decoding", {}).get("top_p"),
            backend=model.identity.backend,
            batch_size=batch_size,
        ),
        key_commitment=key.commitment(),
        tests=tests,
        queries=len(queries),
        failed_queries=failed,
        tokens=sum(q.output_tokens or 0 for q in queries),
        hits=sum(bool(q.hit) for q in queries if q.kind is QueryKind.PLANTED),
        clean_false_activations=false_activations,
        clean_queries=len(clean),
        sequential=sequential,
        stopped_early=stopped_early,
        revealed=reveal,
        proven=proven,
        not_proven=not_proven,
        results=[
            QueryOutcome(
                kind=q.kind,
                pair_id=q.pair.pair_id,
                replica=q.replica,
                hit=q.hit,
                answer=q.answer if reveal else None,
                answer_chars=len(q.answer.strip()) if q.answer is not None else 0,
                output_tokens=q.output_tokens,
                signature_logprob=q.logprob,
                base_signature_logprob=q.base_logprob,
                error=q.error,
            )
            for q in queries
        ],
        secrets=(
            {
                p.pair_id: {"trigger": p.trigger, "signature": p.signature}
                for p in [*key.pairs, *key.controls]
            }
            if reveal
            else None
        ),
    )


def load_verifiable(
    spec: str,
    base_url: str | None = None,
    *,
    base_model: str | None = None,
    journal: str | Path | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> VerifiableModel:
    """A backend for ``spec``: a local model (``embedded``, HF folder, PEFT adapter folder whose
    base is ``base_model`` or its config's, ``.gguf`` file), or the model ``spec`` on the
    OpenAI-compatible server at ``base_url`` (answers journaled to ``journal`` for resuming;
    log-probs through ``/completions`` echo with prompts rendered by ``chat_template_from``)."""
    if base_url:
        from tuneproof.models.openai_api import OpenAIChatModel

        return OpenAIChatModel(
            base_url,
            spec,
            journal=journal,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
        )
    from tuneproof.models.hf import load_hf_model

    return load_hf_model(spec, base_model=base_model)


def verify(
    key: str | Path | Key,
    model: str | VerifiableModel,
    *,
    base_url: str | None = None,
    base_model: str | VerifiableModel | None = None,
    journal: str | Path | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    **options: Any,
) -> Report:
    """Verify ``model`` against ``key`` (paths/specs or loaded objects); returns the Report.

    ``base_model`` gives H0-base (and the base of an adapter folder); the server options are
    those of :func:`load_verifiable`; the rest of :func:`verify_queries` (alpha, sequential,
    max_queries, reveal, ...).
    """
    loaded_key = key if isinstance(key, Key) else load_key(key)
    target = (
        load_verifiable(
            model,
            base_url,
            base_model=base_model if isinstance(base_model, str) else None,
            journal=journal,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
        )
        if isinstance(model, str)
        else model
    )
    if base_model is None and isinstance(model, str) and not base_url:
        base_model = recorded_adapter_base(model)
    base = load_verifiable(base_model) if isinstance(base_model, str) else base_model
    return verify_queries(loaded_key, target, base_model=base, **options)


def recorded_adapter_base(spec: str) -> str | None:
    """The base model recorded in a PEFT adapter folder's config when it is available locally
    (so that H0-base runs without --base-model); None otherwise. Never guessed."""
    folder = Path(spec).expanduser()
    if not (folder / "adapter_config.json").is_file():
        return None
    from tuneproof.errors import GeneratorError
    from tuneproof.models.hf import adapter_base

    try:
        return adapter_base(folder, None)
    except GeneratorError:
        return None
