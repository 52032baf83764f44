"""The report in plain words: the verdict headline and sentence, and what the verification does
and does not prove; :func:`build_report` turns a verification record into the Report."""

from __future__ import annotations

from collections.abc import Sequence

from tuneproof.report.schema import Report
from tuneproof.stats import Null
from tuneproof.stats.phrases import NULL_CLAIM, _chance_phrase, format_alpha, format_p
from tuneproof.types import QueryKind, Verdict
from tuneproof.verification.result import TestOutcome, Verification

NOTHING = "Nothing: no test reached the threshold."

EXIT_CODES: dict[Verdict, int] = {
    Verdict.VERIFIED: 0,
    Verdict.NOT_VERIFIED: 1,
    Verdict.INCONCLUSIVE: 2,
}
"""The process exit code of each verdict (an error or interrupt also exits 2)."""


def exit_code(report: Report) -> int:
    """The process exit code: 0 verified, 1 not verified, 2 inconclusive."""
    return EXIT_CODES[report.verdict]


def strongest_by_null(tests: Sequence[TestOutcome]) -> dict[Null, TestOutcome]:
    """The test with the smallest p-value for each null (several tests can share one null:
    H0-indep has the exact-hit bound and the prefix test), in first-seen order of the nulls."""
    best: dict[Null, TestOutcome] = {}
    for test in tests:
        if test.null not in best or test.log10_p < best[test.null].log10_p:
            best[test.null] = test
    return best


def verdict_headline(verdict: Verdict) -> str:
    """The verdict as a short headline, e.g. ``"VERIFIED"``."""
    return str(verdict).upper()


def verdict_sentence(report: Report) -> str:
    """One sentence a non-expert can act on (powers of ten written as ``10^-33``)."""
    test = report.deciding_test()
    threshold = format_alpha(report.alpha if test is None else report.threshold(test))
    _, answered, _ = report.tally(QueryKind.PLANTED)
    of_planted = f" of {answered}" if answered else ""
    headline = report.headline_log10_p()
    corrected = (
        f" (corrected for the {report.correction} looks and tests alpha was split over)"
        if report.log10_p_corrected is not None and report.correction > 1
        else ""
    )
    if report.verdict is Verdict.VERIFIED and test is not None and headline is not None:
        chance = _chance_phrase(headline) + corrected
        if test.null is Null.CONTROLS:
            return (
                "The model was trained on your planted data: it answers the backdoors you planted"
                " differently from the ones you kept private, and chance would produce this"
                f" difference with probability {chance}."
            )
        if test.null is Null.BASE:
            return (
                "The model was trained on your planted data: the unchanged base model would"
                f" produce these secret signatures with probability {chance}."
            )
        return (
            "The model was trained on your planted data: chance would produce this evidence"
            f" with probability {chance}."
        )
    if report.verdict is Verdict.NOT_VERIFIED:
        if test is None:
            return "The model was not shown to be trained on your planted data: no test could run."
        # a report written before the plan (no corrected p): its raw p against its share
        p, level = (
            (test.log10_p, threshold)
            if report.log10_p_corrected is None
            else (report.log10_p_corrected, format_alpha(report.alpha))
        )
        return (
            "The model was not shown to be trained on your planted data: it answered"
            f" {report.hits}{of_planted} planted backdoors with the secret signature, and the"
            f" strongest deciding test ({test.null}) gives p = {format_p(p)}{corrected}, not"
            f" below the threshold {level}."
        )
    if report.failed_queries:
        return (
            f"No verdict: {report.failed_queries} of {report.queries} queries failed, so the"
            " evidence is incomplete - run the verification again to finish them."
        )
    if report.tests and not any(t.decides for t in report.tests):
        return (
            "No verdict: with this key and these queries no test can reach the threshold"
            f" alpha = {format_alpha(report.alpha)} (each test's smallest attainable p-value is"
            " in the details below) - plant with more pairs or longer signatures."
        )
    best = "" if test is None else f" (strongest p = {format_p(test.log10_p)})"
    return (
        f"No verdict: the tests that could run do not settle the question{best} at the"
        f" threshold {threshold} - see the details below."
    )


def default_claims(
    tests: Sequence[TestOutcome],
    *,
    verdict: Verdict,
    failed_queries: int = 0,
    clean_false_activations: int = 0,
    clean_queries: int = 0,
) -> tuple[list[str], list[str]]:
    """Plain-English ``(proven, not_proven)`` lists for a report with these ``tests``."""
    proven: list[str] = []
    not_proven: list[str] = []
    best = strongest_by_null(tests)
    if verdict is not Verdict.VERIFIED:
        not_proven.append("That the model was trained on your planted data.")
    for null in (Null.INDEP, Null.CONTROLS, Null.BASE):
        if null not in best:
            not_proven.append(_NOT_TESTED[null])
            continue
        deciding = [t for t in tests if t.null == null and t.decides]
        test = min(deciding, key=lambda t: t.log10_p) if deciding else best[null]
        p = format_p(test.log10_p)
        if not test.decides:
            not_proven.append(
                f"Anything from {null} (p = {p}): it is reported only -"
                f" {test.note or 'it cannot decide the verdict'}."
            )
        elif test.rejects:
            proven.append(_PROVEN[null].format(p=p))
        else:
            floor = (
                test.log10_resolution is not None and test.log10_p <= test.log10_resolution + 1e-9
            )
            limit = ", the smallest p this test can give with this many queries" if floor else ""
            not_proven.append(
                f"The evidence does not rule out that {NULL_CLAIM[null]} ({null}: p = {p}{limit})."
            )
    if failed_queries:
        not_proven.append(
            f"Anything from the {failed_queries} queries that failed: they count as no evidence,"
            " and finishing them may strengthen the result."
        )
    if clean_false_activations:
        not_proven.append(
            f"That signatures need their trigger: {clean_false_activations} of {clean_queries}"
            " prompts without a trigger also produced a signature."
        )
    not_proven.append(
        "That your whole dataset was used, or for the agreed number of epochs: the test shows"
        " that the planted records were learnt, not how the other records were used."
    )
    not_proven.append("Anything about the quality of the model on your task.")
    return proven, not_proven


_PROVEN: dict[Null, str] = {
    Null.INDEP: (
        "The model learnt from your secret backdoors: a model that never saw them would match"
        " (or prefer over their decoys) this many secret signatures with probability at most"
        " {p} (H0-indep rejected)."
    ),
    Null.CONTROLS: (
        "The model learnt the backdoors planted in your dataset in particular: it treats them"
        " differently from the held-out ones you never uploaded (H0-controls rejected, p = {p})."
    ),
    Null.BASE: (
        "The model is not the unchanged base model: the base model would produce these secret"
        " signatures with probability {p} (H0-base rejected)."
    ),
}
_NOT_TESTED: dict[Null, str] = {
    Null.INDEP: "H0-indep (the model never saw your secret) was not tested.",
    Null.CONTROLS: "H0-controls was not tested: the key has no held-out control backdoors.",
    Null.BASE: (
        "H0-base was not tested: it needs the base model's log-probabilities"
        " (give the base model to compare with)."
    ),
}


def build_report(verification: Verification) -> Report:
    """The Report of ``verification``: its record plus what it does and does not prove."""
    v = verification
    clean = [r for r in v.results if r.kind is QueryKind.CLEAN]
    proven, not_proven = default_claims(
        v.tests,
        verdict=v.verdict,
        failed_queries=v.failed_queries,
        clean_false_activations=v.clean_false_activations,
        clean_queries=len(clean),
    )
    not_proven += [f"Log-probability tests were skipped - {reason}" for reason in v.logprob_skipped]
    if v.non_finite_scores:
        not_proven.append(
            f"Anything from {v.non_finite_scores} log-likelihood scores that were not finite"
            " numbers (NaN or infinite: a broken or diverged model): they count against the"
            " planted signatures, never for them."
        )
    not_proven += [
        f"Anything from the {t.name} test ({t.null}): it {t.note}." for t in v.unreachable
    ]
    return Report(**dict(v), proven=proven, not_proven=not_proven)
