"""Verify a returned model against a key: query -> match -> tests -> Verification record.

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
from collections.abc import Sequence
from dataclasses import replace

from tuneproof import __version__
from tuneproof.backends.base import VerifiableModel, can_score
from tuneproof.errors import LogprobsUnavailable, TuneproofError
from tuneproof.key import Key
from tuneproof.stats import Null
from tuneproof.types import Progress, QueryKind, now_utc
from tuneproof.verification.answers import Answered
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
from tuneproof.verification.result import (
    Decoding,
    TestOutcome,
    UnreachableTest,
    Untested,
    Verification,
)

__all__ = [
    "DEFAULT_ALPHA",
    "Query",
    "VerifiableModel",
    "_without_trigger",
    "build_queries",
    "decide",
    "run_tests",
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
    progress: Progress | None = None,
) -> Verification:
    """Query ``model`` with the key's prompts and return the :class:`Verification` record
    (the report without its claims in words: :func:`tuneproof.report.wording.build_report`).

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

    def ask(batch: list[Query]) -> list[Answered]:
        nonlocal done
        # a backend reports a failed query as a QueryFailure; anything it raises is an error
        # (a bug or a fatal server refusal), never a failed query that makes "inconclusive"
        items = model.generate([q.chat for q in batch], tokens, batch_size)
        if len(items) != len(batch):
            raise TuneproofError(
                f"{model.identity.name} gave {len(items)} answers to {len(batch)} prompts"
            )
        done += len(batch)
        if progress:
            progress("queries", done, total)
        return [Answered.of(q, item) for q, item in zip(batch, items, strict=True)]

    plan = plan_verification(
        [*planted, *others],
        alpha=alpha,
        looks=len(planted) if sequential else 1,
        logprobs=can_score(model),
        base_logprobs=base_model is not None,
    )
    answers: list[Answered] = []
    if sequential:
        for q in planted:
            answers += ask([q])
            if any(t.rejects for t in run_tests(answers, plan, answers_only=True)):
                stopped_early = len(answers) < len(planted)
                break
    else:
        answers = ask(planted)
    answered: list[Answered] = [*answers, *ask(others)]

    answered, non_finite, skipped = score_answers(answered, model, base_model, batch_size)
    tests = run_tests(answered, plan)
    verdict, primary = decide(tests, answered, plan)
    clean = [q for q in answered if q.kind is QueryKind.CLEAN]
    false_activations = sum(bool(q.hit) for q in clean)
    failed = sum(q.answer is None for q in answered)
    return Verification(
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
        queries=len(answered),
        failed_queries=failed,
        tokens=sum(q.output_tokens or 0 for q in answered),
        hits=sum(bool(q.hit) for q in answered if q.kind is QueryKind.PLANTED),
        clean_false_activations=false_activations,
        clean_queries=len(clean),
        sequential=sequential,
        stopped_early=stopped_early,
        revealed=reveal,
        results=[q.outcome(reveal=reveal) for q in answered],
        secrets=(
            {
                p.pair_id: {"trigger": p.trigger, "signature": p.signature}
                for p in [*key.pairs, *key.controls]
            }
            if reveal
            else None
        ),
        logprob_skipped=skipped,
        non_finite_scores=non_finite,
        unreachable=[
            UnreachableTest(name=str(t.name), null=t.null, note=t.note or "cannot decide")
            for t in plan.unreachable()
        ],
        untested=untested_nulls(answered, tests, base_model=base_model is not None),
    )


def untested_nulls(
    queries: Sequence[Answered], tests: Sequence[TestOutcome], *, base_model: bool
) -> dict[Null, Untested]:
    """Why each null without an outcome in ``tests`` was not tested (``base_model``: one was
    given): the key lacks its queries, every query it needs failed (for H0-controls: every
    control, else every pair's first placement), or a model is missing."""
    planted = [q for q in queries if q.kind is QueryKind.PLANTED]
    controls = [q for q in queries if q.kind is QueryKind.CONTROL]
    no_planted = Untested.PLANTED_FAILED if planted else Untested.NO_PLANTED
    reasons = {
        Null.INDEP: no_planted,
        Null.CONTROLS: (
            Untested.NO_CONTROLS
            if not controls
            else Untested.CONTROLS_FAILED
            if all(q.answer is None for q in controls)
            else no_planted
        ),
        Null.BASE: (
            Untested.NO_BASE_MODEL
            if not base_model
            else no_planted
            if all(q.answer is None for q in planted)
            else Untested.NO_BASE_LOGPROBS
        ),
    }
    ran = {t.null for t in tests}
    return {null: why for null, why in reasons.items() if null not in ran}


def score_answers(
    answered: list[Answered],
    model: VerifiableModel,
    base_model: VerifiableModel | None,
    batch_size: int,
) -> tuple[list[Answered], int, list[str]]:
    """The answers scored by ``model`` (signature log-likelihoods and decoy ranks) and by
    ``base_model`` (signature log-likelihoods), how many scores were not finite, and why a
    backend could not score (its tests are then skipped)."""
    skipped: list[str] = []
    non_finite = 0
    for backend, which in ((model, "logprob"), (base_model, "base_logprob")):
        if backend is None:
            continue
        try:
            answered, count = score_signatures(answered, backend, which, batch_size)
            non_finite += count
            if backend is model:
                answered, count = rank_decoys(answered, model, batch_size)
                non_finite += count
        except LogprobsUnavailable as exc:  # the server cannot score: those tests are skipped
            skipped.append(f"{backend.identity.name}: {exc}")
    return answered, non_finite, skipped


def score_signatures(
    answers: list[Answered], backend: VerifiableModel, which: str, batch_size: int
) -> tuple[list[Answered], int]:
    """The answers with ``which`` (``logprob`` or ``base_logprob``) set on the planted and
    control ones to ``backend``'s log-likelihood of the signature, and how many of those were
    not finite.

    The H0-controls queries (each planted pair's replica 0 and every control) are scored
    together in an order that does not depend on which pairs were planted (by signature), so
    that batching treats both sides alike; the other replicas after them."""
    indices = range(len(answers))
    first = {id(q) for q in first_placements(answers)}
    anchors = [
        i for i in indices if id(answers[i]) in first or answers[i].kind is QueryKind.CONTROL
    ]
    anchors.sort(key=lambda i: (answers[i].pair.signature, repr(answers[i].chat)))
    chosen = set(anchors)
    rest = [i for i in indices if answers[i].kind is QueryKind.PLANTED and i not in chosen]
    scored = list(answers)
    non_finite = 0
    for group in (anchors, rest):
        if not group:
            continue
        values = backend.logprob(
            [answers[i].chat for i in group],
            [answers[i].pair.signature for i in group],
            batch_size,
        )
        for i, value in zip(group, values, strict=True):
            scored[i] = (
                replace(answers[i], logprob=float(value))
                if which == "logprob"
                else replace(answers[i], base_logprob=float(value))
            )
            non_finite += not math.isfinite(float(value))
    return scored, non_finite
