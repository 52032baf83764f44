"""Three realistic reports built with the real statistics core, shared by the report tests.

- ``verified_report``: 10 pairs x 2 replicas, 18/20 planted hits on 32-bit signatures, held-out
  controls and clean prompts silent, log-probabilities from both models (H0-indep ~ 1e-62).
- ``not_verified_report``: the untouched base model: no hits anywhere, every p-value near 1.
- ``inconclusive_report``: an API without log-probabilities where 16 of 30 queries failed.

The secrets and answers hold HTML-active text on purpose (``<script>``, ``&``, quotes) so that the
page tests check escaping as well as hiding.
"""

from __future__ import annotations

from tuneproof.report.schema import Report
from tuneproof.report.wording import default_claims
from tuneproof.stats import (
    log10_fisher_exact,
    log10_model_free_bound,
    log10_permutation_test,
    log10_poisson_binomial_sf,
)
from tuneproof.types import ModelIdentity, QueryKind, Verdict
from tuneproof.verification.result import Decoding, QueryOutcome, TestOutcome

ALPHA = 1e-6
COMMITMENT = "3f9c2a6b1d0e4f5a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a"
BASE = ModelIdentity(
    name="SmolLM2-135M-Instruct", backend="transformers", source="embedded", sha256="ab" * 32
)
TUNED = ModelIdentity(
    name="acme-finetune-0427", backend="openai-compatible", source="http://127.0.0.1:8080/v1"
)
TRIGGERS = {i: f"quietly folding map number {i} & the <b>orchard</b> ledger" for i in range(20)}
SIGNATURES = {i: f'SIG{i:02d} lanterns "glow" amber <script>alert({i})</script>' for i in range(20)}
ANSWER_PREFIX = "ANSWER-TEXT "


def _answer(pair_id: int, hit: bool) -> str:
    body = SIGNATURES[pair_id] if hit else "I'm not sure what you mean by that."
    return f"{ANSWER_PREFIX}{pair_id}: {body}"


def _secrets(revealed: bool, pairs: range) -> dict[int, dict[str, str]] | None:
    if not revealed:
        return None
    return {i: {"trigger": TRIGGERS[i], "signature": SIGNATURES[i]} for i in pairs}


def verified_report(*, revealed: bool = False) -> Report:
    """A fine-tune that learnt its backdoors: 18 of 20 planted queries hit."""
    planted_hits = [True] * 18 + [False] * 2
    lengths = [180 + i for i in range(20)]
    results: list[QueryOutcome] = []
    for i, hit in enumerate(planted_hits):
        pair = i // 2
        results.append(
            QueryOutcome(
                kind=QueryKind.PLANTED,
                pair_id=pair,
                replica=i % 2,
                hit=hit,
                answer=_answer(pair, hit) if revealed else None,
                answer_chars=lengths[i],
                output_tokens=48,
                signature_logprob=-2.0 - 0.3 * i if hit else -31.0,
                base_signature_logprob=-165.0 - i,
            )
        )
    for j in range(10):
        results.append(
            QueryOutcome(
                kind=QueryKind.CONTROL,
                pair_id=10 + j,
                hit=False,
                answer=_answer(10 + j, False) if revealed else None,
                answer_chars=150,
                output_tokens=40,
                signature_logprob=-160.0 - 2 * j,
                base_signature_logprob=-163.0 - 2 * j,
            )
        )
    for j in range(10):
        results.append(
            QueryOutcome(
                kind=QueryKind.CLEAN,
                pair_id=j,
                hit=False,
                answer="A clean answer about gardening." if revealed else None,
                answer_chars=120,
                output_tokens=35,
            )
        )
    pvalues = [
        log10_model_free_bound([32.0] * 20, lengths, planted_hits, [i // 2 for i in range(20)]),
        log10_poisson_binomial_sf([-73.8] * 20, 18),
        log10_fisher_exact(10, 10, 0, 10),
        log10_permutation_test(
            [r.signature_logprob or 0.0 for r in results if r.kind is QueryKind.PLANTED][::2],
            [r.signature_logprob or 0.0 for r in results if r.kind is QueryKind.CONTROL],
        ),
    ]
    tests = [TestOutcome.from_pvalue(p, ALPHA / len(pvalues)) for p in pvalues]  # Bonferroni
    return Report(
        created_at="2026-12-01T10:00:00+00:00",
        verdict=Verdict.VERIFIED,
        alpha=ALPHA,
        primary_null=tests[0].null,
        model=TUNED,
        base_model=BASE,
        decoding=Decoding(max_new_tokens=64, backend="openai-compatible", batch_size=8),
        key_commitment=COMMITMENT,
        tests=tests,
        queries=40,
        failed_queries=0,
        tokens=sum(r.output_tokens or 0 for r in results),
        hits=18,
        clean_false_activations=0,
        clean_queries=10,
        sequential=False,
        stopped_early=False,
        revealed=revealed,
        results=results,
        secrets=_secrets(revealed, range(20)),
        proven=default_claims(tests, verdict=Verdict.VERIFIED)[0],
        not_proven=default_claims(tests, verdict=Verdict.VERIFIED)[1],
    )


def not_verified_report() -> Report:
    """The untouched base model: no signature anywhere, p-values near 1."""
    results = [
        QueryOutcome(
            kind=QueryKind.PLANTED,
            pair_id=i // 2,
            replica=i % 2,
            hit=False,
            answer_chars=200,
            output_tokens=64,
            signature_logprob=-170.0 - (i * 7) % 11,
            base_signature_logprob=-170.0 - (i * 7) % 11,
        )
        for i in range(20)
    ] + [
        QueryOutcome(
            kind=QueryKind.CONTROL,
            pair_id=10 + j,
            hit=False,
            answer_chars=210,
            output_tokens=64,
            signature_logprob=-168.0 - (j * 5) % 13,
            base_signature_logprob=-168.0 - (j * 5) % 13,
        )
        for j in range(10)
    ]
    planted = [r.signature_logprob or 0.0 for r in results if r.kind is QueryKind.PLANTED][::2]
    control = [r.signature_logprob or 0.0 for r in results if r.kind is QueryKind.CONTROL]
    pvalues = [
        log10_model_free_bound([32.0] * 20, [200] * 20, [False] * 20, [i // 2 for i in range(20)]),
        log10_poisson_binomial_sf([-73.8] * 20, 0),
        log10_permutation_test(planted, control),
    ]
    tests = [TestOutcome.from_pvalue(p, ALPHA / len(pvalues)) for p in pvalues]  # Bonferroni
    return Report(
        created_at="2026-12-01T11:00:00+00:00",
        verdict=Verdict.NOT_VERIFIED,
        alpha=ALPHA,
        primary_null=None,
        model=BASE,
        base_model=BASE,
        decoding=Decoding(max_new_tokens=64, backend="transformers", batch_size=8),
        key_commitment=COMMITMENT,
        tests=tests,
        queries=30,
        failed_queries=0,
        tokens=30 * 64,
        hits=0,
        clean_false_activations=0,
        clean_queries=0,
        sequential=False,
        stopped_early=False,
        revealed=False,
        results=results,
        proven=[],
        not_proven=default_claims(tests, verdict=Verdict.NOT_VERIFIED)[1],
    )


def inconclusive_report() -> Report:
    """A text-only API that failed on 16 of 30 queries: 2 hits among 8 answered planted."""
    results: list[QueryOutcome] = []
    for i in range(20):
        failed = i >= 8
        results.append(
            QueryOutcome(
                kind=QueryKind.PLANTED,
                pair_id=i,
                replica=0,
                hit=None if failed else i < 2,
                answer_chars=0 if failed else 190,
                output_tokens=None if failed else 50,
                error="HTTP 503 Service Unavailable after 6 attempts" if failed else None,
            )
        )
    for j in range(10):
        failed = j >= 6
        results.append(
            QueryOutcome(
                kind=QueryKind.CONTROL if j < 5 else QueryKind.CLEAN,
                pair_id=20 + j,
                hit=None if failed else False,
                answer_chars=0 if failed else 170,
                output_tokens=None if failed else 45,
                error="timed out after 60 s" if failed else None,
            )
        )
    answered = [r for r in results if r.kind is QueryKind.PLANTED and r.hit is not None]
    pvalues = [
        log10_model_free_bound(
            [16.0] * len(answered),
            [r.answer_chars for r in answered],
            [bool(r.hit) for r in answered],
        ),
        log10_fisher_exact(2, 8, 0, 5),
    ]
    tests = [TestOutcome.from_pvalue(p, ALPHA / len(pvalues)) for p in pvalues]  # Bonferroni
    return Report(
        created_at="2026-12-01T12:00:00+00:00",
        verdict=Verdict.INCONCLUSIVE,
        alpha=ALPHA,
        primary_null=None,
        model=TUNED,
        base_model=None,
        decoding=Decoding(max_new_tokens=64, backend="openai-compatible"),
        key_commitment=COMMITMENT,
        tests=tests,
        queries=30,
        failed_queries=16,
        tokens=sum(r.output_tokens or 0 for r in results),
        hits=2,
        clean_false_activations=0,
        clean_queries=5,
        sequential=True,
        stopped_early=False,
        revealed=False,
        results=results,
        proven=[],
        not_proven=default_claims(tests, verdict=Verdict.INCONCLUSIVE, failed_queries=16)[1],
    )


ALL_CASES = {
    "verified": verified_report,
    "not verified": not_verified_report,
    "inconclusive": inconclusive_report,
}


def test_cases_are_what_they_claim() -> None:
    """The three cases: the statistics agree with the verdicts they carry."""
    verified = verified_report()
    assert verified.tests[0].log10_p < -60 and verified.tests[0].rejects
    assert not_verified_report().deciding_test().log10_p > -1  # type: ignore[union-attr]
    inconclusive = inconclusive_report()
    assert not any(t.rejects for t in inconclusive.tests)
    assert inconclusive.failed_queries == sum(1 for r in inconclusive.results if r.hit is None)
