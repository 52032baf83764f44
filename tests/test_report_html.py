"""The HTML page, read as text: self-contained, verdict first, secrets only when revealed,
escaping, inline plots that decode, and the reasons given when a plot is absent."""

from __future__ import annotations

import base64
import io
import re
from functools import cache
from html import escape
from html.parser import HTMLParser

import pytest
from PIL import Image
from test_report_cases import (
    ALL_CASES,
    ANSWER_PREFIX,
    SIGNATURES,
    TRIGGERS,
    inconclusive_report,
    verified_report,
)

from tuneproof.report.files import report_to_html
from tuneproof.report.plots import _p_ticks, hits_plot, loglik_plot
from tuneproof.report.schema import Report
from tuneproof.report.wording import verdict_sentence
from tuneproof.types import ModelIdentity, QueryKind
from tuneproof.verification.result import QueryOutcome


@cache
def page(case: str) -> str:
    if case == "revealed":
        return report_to_html(verified_report(revealed=True))
    return report_to_html(ALL_CASES[case]())


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


CASES = [*ALL_CASES, "revealed"]


@pytest.mark.parametrize("case", CASES)
def test_page_is_self_contained(case: str) -> None:
    html = page(case)
    found = tags(html)
    for tag, attrs in found:
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith("data:"), f"<{tag} {name}={value[:40]!r}> is not inline"
    assert not any(tag in ("script", "iframe", "object", "embed") for tag, _ in found)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", html, re.IGNORECASE)
    assert "url(" not in html and "@import" not in html and "@font-face" not in html
    csp = [a for t, a in found if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in (csp[0]["content"] or "")


@pytest.mark.parametrize("case", CASES)
def test_verdict_comes_first_then_claims_then_plots_then_details(case: str) -> None:
    html = page(case)
    report = verified_report() if case == "revealed" else ALL_CASES[case]()
    headline = str(report.verdict).capitalize()
    positions = [
        html.index(f"<h1>{headline}</h1>"),
        html.index("What this proves"),
        html.index("What this does not prove"),
        html.index('id="plots"'),
        html.index('id="details"'),
    ]
    assert positions == sorted(positions)
    assert "<img" not in html[: positions[3]]
    first_sentence = verdict_sentence(report).split(":")[0]
    assert html.index(escape(first_sentence)) < positions[1]
    for claim in report.proven + report.not_proven:
        assert escape(claim.split("10^")[0]) in html


def test_powers_of_ten_are_typeset() -> None:
    html = page("verified")
    assert "probability below 10<sup>−62</sup>." in html
    assert "10^" not in html


def test_shared_alpha_is_explained() -> None:
    html = page("verified")
    assert "10<sup>−6</sup>, split over 4 deciding tests: 2.5×10<sup>−7</sup> each" in html
    assert "each is judged at a share of it (Bonferroni)" in html
    plain = report_to_html(
        Report.model_validate(
            inconclusive_report().model_dump()
            | {
                "tests": [
                    t.model_copy(update={"threshold": None}) for t in inconclusive_report().tests
                ]
            }
        )
    )
    assert "Bonferroni" not in plain and "split over" not in plain


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_secrets_and_answers_stay_hidden(case: str) -> None:
    html = page(case)
    for secret in [*TRIGGERS.values(), *SIGNATURES.values()]:
        assert secret not in html and escape(secret) not in html
    for marker in ("SIG0", "SIG1", "orchard", "lanterns", ANSWER_PREFIX.strip()):
        assert marker not in html
    assert "hidden (make the report with --reveal)" in html


def test_revealed_page_shows_escaped_secrets_and_answers() -> None:
    html = page("revealed")
    for i in range(20):
        assert escape(TRIGGERS[i]) in html
        assert escape(SIGNATURES[i]) in html
    assert f"{ANSWER_PREFIX}0: <mark>{escape(SIGNATURES[0])}</mark>" in html
    assert "I&#x27;m not sure what you mean by that." in html
    # the signatures hold <script> and the triggers <b>: never raw
    assert "<script" not in html and "<b>orchard" not in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html


def test_model_names_are_escaped() -> None:
    evil = ModelIdentity(name='<img src=x onerror="alert(1)">', backend="b", source="s")
    html = report_to_html(
        Report.model_validate(inconclusive_report().model_dump() | {"model": evil})
    )
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_templates_autoescape_model_names_and_answers() -> None:
    script = "<script>alert(1)</script>"
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    data = verified_report(revealed=True).model_dump()
    data["model"] = ModelIdentity(name=script, backend="b", source="s").model_dump()
    data["results"][0]["answer"] = script
    data["results"][0]["answer_chars"] = len(script)
    html = report_to_html(Report.model_validate(data))
    assert "<script" not in html and not any(tag == "script" for tag, _ in tags(html))
    assert f"<title>tuneproof: Verified - {escaped}</title>" in html
    assert f"Model <b>{escaped}</b>" in html
    assert f'<tr class="answer"><td colspan="10">{escaped}</td></tr>' in html


@pytest.mark.parametrize(("case", "count"), [("verified", 3), ("not verified", 3)])
def test_inline_plots_are_real_pngs(case: str, count: int) -> None:
    sources = [a["src"] for t, a in tags(page(case)) if t == "img"]
    assert len(sources) == count
    for source in sources:
        assert source is not None and source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG" and image.width >= 600 and image.height >= 150
        assert len(image.convert("RGB").getcolors(1 << 24) or []) > 20  # a drawing, not a blank


def test_absent_loglik_plot_says_why() -> None:
    html = page("inconclusive")
    assert html.count("<img") == 2
    assert "Not shown: the returned model gave no log-probabilities" in html

    # log-probabilities of the returned model only: a strip plot and the reason for no scatter
    data = inconclusive_report().model_dump()
    for i, row in enumerate(data["results"]):
        if row["hit"] is not None:
            row["signature_logprob"] = -150.0 + i
    png, caption = loglik_plot(Report.model_validate(data))
    assert png is not None
    assert "no base model was given" in caption


def test_page_is_deterministic() -> None:
    assert report_to_html(inconclusive_report()) == page("inconclusive")


def test_pages_without_results_or_tests_still_render() -> None:
    data = inconclusive_report().model_dump() | {"tests": [], "results": []}
    html = report_to_html(Report.model_validate(data))
    assert "<img" not in html and "<h1>Inconclusive</h1>" in html
    assert "Not shown" in html


def test_many_queries_wrap_into_rows() -> None:
    def grid_height(n: int) -> int:
        data = inconclusive_report().model_dump()
        data["results"] = [
            QueryOutcome(kind=QueryKind.PLANTED, pair_id=i, hit=i % 3 == 0, answer_chars=99)
            for i in range(n)
        ]
        png = hits_plot(Report.model_validate(data))
        assert png is not None
        return Image.open(io.BytesIO(base64.b64decode(png))).height

    one_row, four_rows = grid_height(40), grid_height(130)
    assert four_rows - one_row > 3 * 15  # three more rows of squares, each > 15 px


def test_p_axis_ticks() -> None:
    assert _p_ticks(-8.0, 12.0) == [0.0, -3.0, -6.0]
    assert _p_ticks(-1724.0, 12.0) == [0.0, -3.0, -6.0, -9.0, -12.0, -100.0, -1000.0]
