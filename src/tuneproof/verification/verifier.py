"""Verify a returned model against a key: query -> match -> tests -> Report.

Queries the planted prompts (one per placement), the held-out control prompts, and a few clean
carrier prompts (the trigger removed) as a negative control; a *hit* is the exact signature
occurring in the whitespace-stripped greedy answer. Then runs every test the access allows:

- H0-indep (always): the model-free bound of the prefix-free sampler on exact hits, and the
  prefix test on how many whole signature tokens each answer starts with (keys that record the
  signatures' token boundaries), which sees partial learning of signatures that are never
  reproduced in full; and, when the key holds decoys and the verified model gives log-probs,
  the decoy rank test (the true signature's log-likelihood rank among its decoys);
- H0-base (when the base model's log-probs are available): Poisson-binomial over the base
  model's probabilities of sampling each signature - reported for parity with vTune, never
  deciding (the answers are greedy, not samples);
- H0-controls (when the key has controls): Fisher's exact test on hits of planted vs held-out
  pairs, and an exact rank-sum test on signature log-likelihoods when the verified model gives
  them.

The verdict is "verified" when a deciding test rejects at alpha / (deciding tests x looks)
(Bonferroni over a plan fixed before the first answer, counting only the tests that can reach
their share; see :mod:`tuneproof.verification.evidence`); "inconclusive" when more than a fifth
of the
queries failed, no planted query was answered, or no test can reach alpha with this key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneproof import __version__
from tuneproof.backends.base import VerifiableModel, can_score, recorded_base_model, resolve_model
from tuneproof.errors import LogprobsUnavailable, TuneproofError
from tuneproof.key import Key, load_key
from tuneproof.report.schema import (
    Decoding,
    QueryKind,
    QueryOutcome,
    Report,
    default_claims,
)
from tuneproof.types import QueryFailure, now_utc
from tuneproof.verification.evidence import (
    DEFAULT_ALPHA,
    corrected_log10_p,
    decide,
    first_placements,
    plan_verification,
    rank_decoys,
    run_tests,
)
from tuneproof.verification.queries import (
    DEFAULT_CLEAN_QUERIES,
    Query,
    _without_trigger,
    build_queries,
)

__all__ = [
    "DEFAULT_ALPHA",
    "Query",
    "VerifiableModel",
    "_without_trigger",
    "build_queries",
    "decide",
    "load_verifiable",
    "run_tests",
    "verify",
    "verify_queries",
]


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

    The plan (which tests may decide, their floors, the number of looks) is fixed from the key
    and the backend before the first query
    (:func:`~tuneproof.verification.evidence.plan_verification`).
    ``sequential`` sends planted prompts one at a time and stops once an answer-only test
    rejects; every look, the last included, is judged at alpha / (deciding tests x planted
    queries), so stopping early never changes the verdict the same answers would give at the
    end. ``max_queries`` caps the planted queries sent.
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

    plan = plan_verification(
        [*planted, *others],
        alpha=alpha,
        looks=len(planted) if sequential else 1,
        logprobs=can_score(model),
        base_logprobs=base_model is not None,
    )
    if sequential:
        sent: list[Query] = []
        for q in planted:
            ask([q])
            sent.append(q)
            if any(t.rejects for t in run_tests(sent, plan, answers_only=True)):
                stopped_early = len(sent) < len(planted)
                break
        planted = sent
    else:
        ask(planted)
    queries = [*planted, *others]
    ask(others)

    skipped: list[str] = []
    non_finite = 0
    for backend, attr in ((model, "logprob"), (base_model, "base_logprob")):
        if backend is None:
            continue
        try:
            non_finite += score_signatures(queries, backend, attr, batch_size)
            if backend is model:
                non_finite += rank_decoys(queries, model, batch_size)
        except LogprobsUnavailable as exc:  # the server cannot score: those tests are skipped
            skipped.append(f"{backend.identity.name}: {exc}")

    tests = run_tests(queries, plan)
    verdict, primary = decide(tests, queries, plan)
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
    if non_finite:
        not_proven.append(
            f"Anything from {non_finite} log-likelihood scores that were not finite numbers (NaN"
            " or infinite: a broken or diverged model): they count against the planted"
            " signatures, never for them."
        )
    not_proven += [
        f"Anything from the {t.name} test ({t.null}): it {t.note}." for t in plan.unreachable()
    ]
    return Report(
        tool_version=__version__,
        created_at=now_utc(),
        verdict=verdict,
        alpha=alpha,
        primary_null=primary,
        log10_p_corrected=corrected_log10_p(tests, plan),
        correction=plan.correction,
        looks=plan.looks,
        model=model.identity,
        base_model=base_model.identity if base_model else None,
        decoding=Decoding(
            temperature=0.0,
            max_new_tokens=tokens,
            top_p=model.decoding.get("top_p"),
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
                matched_tokens=q.matched,
                decoy_rank=q.decoy_rank,
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


def score_signatures(
    queries: list[Query], backend: VerifiableModel, attr: str, batch_size: int
) -> int:
    """Set ``attr`` (``logprob`` or ``base_logprob``) on the planted and control queries to
    ``backend``'s log-likelihood of the signature; returns how many were not finite.

    The H0-controls queries (each planted pair's replica 0 and every control) are scored
    together in an order that does not depend on which pairs were planted (by signature), so
    that batching treats both sides alike; the other replicas after them."""
    anchors = [*first_placements(queries), *(q for q in queries if q.kind is QueryKind.CONTROL)]
    anchors.sort(key=lambda q: (q.pair.signature, repr(q.chat)))
    ids = {id(q) for q in anchors}
    rest = [q for q in queries if q.kind is QueryKind.PLANTED and id(q) not in ids]
    non_finite = 0
    for group in (anchors, rest):
        if not group:
            continue
        values = backend.logprob(
            [q.chat for q in group], [q.pair.signature for q in group], batch_size
        )
        for q, value in zip(group, values, strict=True):
            setattr(q, attr, float(value))
            non_finite += not math.isfinite(float(value))
    return non_finite


def load_verifiable(
    spec: str,
    base_url: str | None = None,
    *,
    base_model: str | None = None,
    journal: str | Path | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> VerifiableModel:
    """A backend for ``spec`` from the registry (:func:`tuneproof.backends.base.resolve_model`):
    a local model (``embedded``, HF folder, PEFT adapter folder whose base is ``base_model`` or
    its config's, ``.gguf`` file), or the model ``spec`` on the OpenAI-compatible server at
    ``base_url`` (answers journaled to ``journal`` for resuming; log-probs through
    ``/completions`` echo with prompts rendered by ``chat_template_from``)."""
    return resolve_model(
        spec,
        base_url=base_url,
        base_model=base_model,
        journal=journal,
        chat_template_from=chat_template_from,
        api_key_env=api_key_env,
    )


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
    if base_model is None and isinstance(model, str):
        base_model = recorded_base_model(model, base_url)
    base = load_verifiable(base_model) if isinstance(base_model, str) else base_model
    return verify_queries(loaded_key, target, base_model=base, **options)
