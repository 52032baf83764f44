"""The report as one self-contained HTML page that a non-expert can read.

Order: the verdict (big, coloured, one plain sentence), what this proves and does not prove,
three plots (:mod:`tuneproof.report.plots`), then the details. Everything is inline — CSS in a
``<style>`` element, plots as base64 PNG — and a Content-Security-Policy forbids the page from
loading anything else. Triggers, signatures and answers appear only when the report was revealed.

The markup lives in Jinja2 templates (``report/templates/*.j2``) rendered with autoescaping on:
this module hands them plain data (strings, numbers, lists), never HTML, so every piece of text
from the report is escaped by the template engine.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jinja2

from tuneproof.report.plots import KIND_COLOURS, KIND_LABELS, hits_plot, loglik_plot, pvalue_plot
from tuneproof.report.schema import Report
from tuneproof.report.wording import (
    NOTHING,
    answered_fraction,
    exit_code,
    failure_reasons,
    verdict_headline,
    verdict_sentence,
)
from tuneproof.stats.phrases import NULL_CLAIM, format_alpha, format_p
from tuneproof.types import QueryKind, Verdict

__all__ = [
    "KIND_COLOURS",
    "KIND_LABELS",
    "VERDICT_COLOURS",
    "environment",
    "hits_plot",
    "loglik_plot",
    "pvalue_plot",
    "render",
    "render_html",
]

# (accent, background) per verdict
VERDICT_COLOURS: dict[Verdict, tuple[str, str]] = {
    Verdict.VERIFIED: ("#0b7a3b", "#e7f6ed"),
    Verdict.NOT_VERIFIED: ("#b42318", "#fdeceb"),
    Verdict.INCONCLUSIVE: ("#9a5b00", "#fff4dc"),
}

_POWER = re.compile(r"10\^(-?[0-9]+(?:\.[0-9]+)?)")
# The escaper (markupsafe) writes quotes as &#34; and &#39;; the pages have always used the
# equivalent &quot; and &#x27;. After escaping, every "&" that came from data reads "&amp;", so
# these two references can only be the escaper's own and respelling them is safe.
_QUOTES = {"&#34;": "&quot;", "&#39;": "&#x27;"}


def power_parts(text: str) -> list[tuple[str, str]]:
    """``text`` split around each ``10^-33``: (text before, exponent with a real minus sign),
    the last part with exponent ``""``; the templates typeset the exponent as ``<sup>``."""
    parts, start = [], 0
    for match in _POWER.finditer(text):
        parts.append((text[start : match.start()], match.group(1).replace("-", "−")))
        start = match.end()
    parts.append((text[start:], ""))
    return parts


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates (made once, on first use)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tuneproof", "report/templates"),
        autoescape=True,  # every template here is HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["power_parts"] = power_parts
    return env


def render(template: str, **context: Any) -> str:
    """Render one of ``report/templates`` with ``context`` (plain data: it is escaped)."""
    page = environment().get_template(template).render(**context)
    for escaped, spelling in _QUOTES.items():
        page = page.replace(escaped, spelling)
    return page


# --------------------------------------------------------------------------- page data


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return "—" if value is None else str(value)


def _facts(report: Report) -> list[tuple[str, str]]:
    _, p_ans, p_fail = report.tally(QueryKind.PLANTED)
    c_hits, c_ans, c_fail = report.tally(QueryKind.CONTROL)
    planted = answered_fraction(report.hits, p_ans, p_fail, " of ")
    items = [("Planted backdoors answered with the signature", planted)]
    matched = [r.matched_tokens for r in report.results if r.kind is QueryKind.PLANTED]
    if any(m is not None for m in matched):
        total = sum(m or 0 for m in matched)
        items.append(("Signature tokens matched at the start of planted answers", f"{total:,}"))
    if c_ans or c_fail:
        controls = answered_fraction(c_hits, c_ans, c_fail, " of ")
        items.append(("Held-out controls with the signature", controls))
    if report.clean_queries:
        clean = answered_fraction(*report.tally(QueryKind.CLEAN), " of ")
        items.append(("Clean prompts with a signature", clean))
    items += [
        ("Queries (failed)", f"{report.queries} ({report.failed_queries})"),
        *(
            [("Why queries failed", "; ".join(f"{r} ({n})" for r, n in reasons[:3]))]
            if (reasons := failure_reasons(report))
            else []
        ),
        ("Output tokens", f"{report.tokens:,}"),
        ("Threshold alpha", report.alpha_note()),
    ]
    return items


def _figures(report: Report) -> list[dict[str, str | None]]:
    log_png, log_caption = loglik_plot(report)
    split = (
        " Several tests share alpha, so each is judged at a share of it (Bonferroni): reporting"
        " them all never raises the chance of a false 'verified'. Tests that cannot decide"
        " (H0-base on greedy answers, or a test whose smallest attainable p-value is above its"
        " share) are shown but take no share."
        if any(report.threshold(t) != report.alpha for t in report.tests)
        else ""
    )
    return [
        {
            "png": hits_plot(report),
            "alt": "hit or miss for every query",
            "caption": "Each square is one query. Filled squares: the answer contained the secret"
            " signature. Planted backdoors should hit when the model was trained on your"
            " data; held-out controls and clean prompts should not.",
        },
        {"png": log_png, "alt": "signature log-likelihoods", "caption": log_caption},
        {
            "png": pvalue_plot(report),
            "alt": "p-value of each test",
            "caption": "A p-value is the chance of evidence this strong if the model had not"
            " learnt your backdoors. A test proves its point when its bar reaches past the red"
            f" line (threshold alpha = {report.alpha_note()})." + split,
        },
    ]


def _tests(report: Report) -> list[dict[str, Any]]:
    return [
        {
            "null": str(t.null) + (" (primary)" if t.null == report.primary_null else ""),
            "claim": NULL_CLAIM[t.null],
            "log10_p": f"{t.log10_p:.2f}",
            "p": format_p(t.log10_p),
            "threshold": format_alpha(report.threshold(t)),
            "rejects": t.rejects,
            "decides": t.decides,
            "note": t.note or "cannot decide",
            "method": t.method,
            "inputs": [(k, _value(v)) for k, v in t.inputs.items()],
            "explanation": t.explanation,
        }
        for t in report.tests
    ]


def _tables(report: Report) -> dict[str, list[list[str]]]:
    """The plain tables of the details: decoding, models, run and (when revealed) secrets."""
    models = [
        [role, m.name, m.backend, m.source, _value(m.sha256)]
        for role, m in (("returned model", report.model), ("base model", report.base_model))
        if m is not None
    ]
    run = [
        [key, _value(value)]
        for key, value in [
            ("key commitment (SHA-256)", report.key_commitment),
            ("key commitment checked", report.commitment_note()),
            (
                "key integrity check",
                report.key_integrity_note()
                or (report.key_integrity and "passed when the key was loaded"),
            ),
            ("queries", report.queries),
            ("failed queries", report.failed_queries),
            ("output tokens", report.tokens),
            ("sequential (stop once verified)", report.sequential),
            ("stopped early", report.stopped_early),
            ("exit code", exit_code(report)),
            ("report version", report.report_version),
            ("tuneproof version", report.tool_version),
            ("created", report.created_at),
        ]
    ]
    secrets = [
        [str(pair_id), pair.get("trigger", ""), pair.get("signature", "")]
        for pair_id, pair in sorted((report.secrets or {}).items())
        if report.revealed
    ]
    decoding = [[k, _value(v)] for k, v in report.decoding.model_dump().items()]
    return {"decoding": decoding, "models": models, "run": run, "secrets": secrets}


def _marked(answer: str, signature: str | None) -> list[str]:
    """``answer`` split around each occurrence of ``signature`` (highlighted between parts)."""
    if not signature or signature not in answer:
        return [answer]
    return answer.split(signature)


def _queries(report: Report) -> list[dict[str, Any]]:
    secrets = report.secrets or {}
    rows = []
    for r in report.results:
        signature = secrets.get(r.pair_id, {}).get("signature")
        answer = r.answer if report.revealed else None
        rows.append(
            {
                "cells": [
                    str(r.kind),
                    str(r.pair_id),
                    _value(r.replica),
                    "failed" if r.hit is None else "hit" if r.hit else "miss",
                    _value(r.matched_tokens),
                    str(r.answer_chars),
                    _value(r.output_tokens),
                    _value(r.signature_logprob),
                    _value(r.base_signature_logprob),
                    _value(r.error),
                ],
                "signature": signature,
                "answer": None if answer is None else _marked(answer, signature),
            }
        )
    return rows


def render_html(report: Report) -> str:
    """The whole page as a string."""
    accent, background = VERDICT_COLOURS[report.verdict]
    headline = verdict_headline(report.verdict).capitalize()
    return render(
        "report.html.j2",
        report=report,
        accent=accent,
        background=background,
        headline=headline,
        title=f"tuneproof: {headline} - {report.model.name}",
        sentence=verdict_sentence(report),
        facts=_facts(report),
        claims=[
            ("What this proves", report.proven, "#0b7a3b"),
            ("What this does not prove", report.not_proven, "#9a5b00"),
        ],
        nothing=NOTHING,
        figures=_figures(report),
        tests=_tests(report),
        tables=_tables(report),
        queries=_queries(report),
    )
