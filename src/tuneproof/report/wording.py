"""The report in plain words: the verdict headline and sentence, and what the verification does
and does not prove; :func:`build_report` turns a verification record into the Report."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

from tuneproof.report.schema import Report
from tuneproof.stats import Null
from tuneproof.stats.phrases import NULL_CLAIM, _chance_phrase, format_alpha, format_p
from tuneproof.types import QueryKind, Verdict
from tuneproof.verification.result import TestOutcome, Untested, Verification

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
    untested: Mapping[Null, Untested] | None = None,
    failure_reasons: Sequence[tuple[str, int]] = (),
) -> tuple[list[str], list[str]]:
    """Plain-English ``(proven, not_proven)`` lists for a report with these ``tests``:
    ``clean_queries`` counts the answered clean prompts, ``untested`` says why a null has no
    test, ``failure_reasons`` are the failed queries' reasons (:func:`failure_reasons`)."""
    proven: list[str] = []
    not_proven: list[str] = []
    best = strongest_by_null(tests)
    if verdict is not Verdict.VERIFIED:
        not_proven.append("That the model was trained on your planted data.")
    for null in (Null.INDEP, Null.CONTROLS, Null.BASE):
        if null not in best:
            not_proven.append(not_tested(null, (untested or {}).get(null)))
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
        most = (
            f" (most often: {failure_reasons[0][0]}, {failure_reasons[0][1]} times)"
            if failure_reasons
            else ""
        )
        not_proven.append(
            f"Anything from the {failed_queries} queries that failed{most}: they count as no"
            " evidence, and finishing them may strengthen the result."
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
    Null.INDEP: "H0-indep (the model never saw your secret) was not tested",
    Null.CONTROLS: "H0-controls was not tested",
    Null.BASE: "H0-base was not tested",
}
_BECAUSE: dict[Untested, str] = {
    Untested.NO_PLANTED: "no planted query was sent",
    Untested.PLANTED_FAILED: "every planted query failed",
    Untested.NO_CONTROLS: "the key has no held-out control backdoors (plant with --controls)",
    Untested.CONTROLS_FAILED: "every held-out control query failed",
    Untested.NO_BASE_MODEL: (
        "it needs the base model's log-probabilities (give the base model to compare with)"
    ),
    Untested.NO_BASE_LOGPROBS: "the base model gave no log-probabilities",
}
_UNKNOWN: dict[Null, str] = {  # a record that does not say why (older reports)
    Null.INDEP: "it needs answered planted queries",
    Null.CONTROLS: "it needs the key's held-out control backdoors and their queries answered",
    Null.BASE: _BECAUSE[Untested.NO_BASE_MODEL],
}


def not_tested(null: Null, reason: Untested | None) -> str:
    """Why ``null`` was not tested, as one sentence (``reason`` None: the record does not say)."""
    because = _UNKNOWN[null] if reason is None else _BECAUSE[reason]
    if null is Null.CONTROLS and reason is Untested.PLANTED_FAILED:
        because = "every planted query it compares the controls with (each pair's first) failed"
    return f"{_NOT_TESTED[null]}: {because}."


def answered_fraction(hits: int, answered: int, failed: int, of: str = "/") -> str:
    """``hits`` of the ``answered`` queries, e.g. ``"3/5"``; with failures
    ``"0/0 answered (2 failed)"``, so that a failed query never reads as a clean answer."""
    text = f"{hits}{of}{answered}"
    return f"{text} answered ({failed} failed)" if failed else text


_ATTEMPTS = re.compile(r" \(\d+ attempts?\)$")
_SDK_DEFAULT = re.compile(r": Error code: \d+$")  # the SDK's detail for an empty error body
REASON_CHARS = 160


def failure_reason(error: str | None, source: str = "") -> str:
    """A failed query's ``error`` as a reason to group by: the server's address (``source``)
    as "the server", without the attempt count and the SDK's empty detail."""
    if not error:
        return "no reason recorded"
    text = " ".join(error.split())
    if source:
        text = text.replace(source, "the server")
    text = _SDK_DEFAULT.sub("", _ATTEMPTS.sub("", text)).removeprefix("the server answered ")
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def failure_reasons(report: Verification) -> list[tuple[str, int]]:
    """The failed queries' reasons with their counts, most common first."""
    reasons = Counter(
        failure_reason(r.error, report.model.source) for r in report.results if r.hit is None
    )
    return sorted(reasons.items(), key=lambda item: (-item[1], item[0]))


def failure_lines(report: Verification, most: int = 3) -> list[str]:
    """How many queries failed and why, grouped by reason, in at most ``most`` + 2 lines, e.g.
    ``["12 queries failed: HTTP 500 on /chat/completions (12)"]``; none when nothing failed."""
    reasons = failure_reasons(report)
    failed = sum(count for _, count in reasons)
    if not failed:
        return []
    head = f"{failed} {'query' if failed == 1 else 'queries'} failed"
    if len(reasons) == 1:
        return [f"{head}: {reasons[0][0]} ({failed})"]
    lines = [f"{head}:", *(f"  {reason} ({count})" for reason, count in reasons[:most])]
    rest = reasons[most:]
    if rest:
        lines.append(f"  {len(rest)} other reasons ({sum(count for _, count in rest)})")
    return lines


def build_report(verification: Verification) -> Report:
    """The Report of ``verification``: its record plus what it does and does not prove."""
    v = verification
    _, clean_answered, _ = v.tally(QueryKind.CLEAN)
    proven, not_proven = default_claims(
        v.tests,
        verdict=v.verdict,
        failed_queries=v.failed_queries,
        clean_false_activations=v.clean_false_activations,
        clean_queries=clean_answered,
        untested=v.untested,
        failure_reasons=failure_reasons(v),
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
