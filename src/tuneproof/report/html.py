"""The report as one self-contained HTML page that a non-expert can read.

Order: the verdict (big, coloured, one plain sentence), what this proves and does not prove,
three plots, then the details. Everything is inline — CSS in a ``<style>`` element, plots as
base64 PNG — and a Content-Security-Policy forbids the page from loading anything else. Every
piece of text from the report goes through :func:`html.escape`; triggers, signatures and
answers appear only when the report was revealed.

matplotlib is imported lazily and used through its object-oriented API with the Agg canvas,
so rendering a page never touches pyplot or the process's default backend.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from tuneproof.report.schema import (
    NOTHING,
    NULL_CLAIM,
    QueryKind,
    QueryOutcome,
    Report,
    Verdict,
    exit_code,
    format_alpha,
    format_p,
    verdict_headline,
    verdict_sentence,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# (accent, background) per verdict
VERDICT_COLOURS: dict[Verdict, tuple[str, str]] = {
    Verdict.VERIFIED: ("#0b7a3b", "#e7f6ed"),
    Verdict.NOT_VERIFIED: ("#b42318", "#fdeceb"),
    Verdict.INCONCLUSIVE: ("#9a5b00", "#fff4dc"),
}
KIND_COLOURS: dict[QueryKind, str] = {
    QueryKind.PLANTED: "#1d4ed8",
    QueryKind.CONTROL: "#d97706",
    QueryKind.CLEAN: "#6b7280",
}
KIND_LABELS: dict[QueryKind, str] = {
    QueryKind.PLANTED: "Planted backdoors",
    QueryKind.CONTROL: "Held-out controls",
    QueryKind.CLEAN: "Clean prompts",
}
_HIT, _MISS, _FAILED = "#1d4ed8", "#e5e7eb", "#ffffff"
_GRID_COLUMNS = 40

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:#1f2937;line-height:1.5;
 font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1000px;margin:0 auto;padding:24px 20px 48px}
h2{font-size:1.3rem;margin:2rem 0 .6rem}h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
.verdict{background:var(--bg);border-left:10px solid var(--c);border-radius:10px;padding:22px 26px}
.verdict .kicker{margin:0;color:#4b5563;font-size:.9rem;letter-spacing:.04em;
 text-transform:uppercase}
.verdict h1{margin:.1rem 0 .4rem;font-size:3rem;line-height:1.1;color:var(--c)}
.verdict .model{margin:0 0 .6rem;color:#374151}
.verdict .sentence{font-size:1.25rem;margin:0 0 1rem;font-weight:500}
.facts{display:flex;flex-wrap:wrap;gap:10px;margin:0}
.facts div{background:#fff;border-radius:8px;padding:8px 14px;min-width:140px}
.facts dt{font-size:.8rem;color:#4b5563}.facts dd{margin:0;font-size:1.15rem;font-weight:600}
.claims{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-top:20px;align-items:start}
.card{background:#fff;border-radius:10px;padding:6px 20px 14px;border-top:4px solid var(--c)}
.card h2{margin-top:.8rem}.card ul{padding-left:1.2rem;margin:0}.card li{margin:.35rem 0}
figure{background:#fff;border-radius:10px;margin:0 0 16px;padding:14px 18px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#374151;font-size:.95rem;margin-top:6px}
.absent{color:#4b5563;font-style:italic}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9rem}
th,td{text-align:left;vertical-align:top;padding:6px 10px;border-bottom:1px solid #e5e7eb}
th{background:#f0f2f5;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.nowrap{white-space:nowrap}td.hash{font-family:ui-monospace,monospace;word-break:break-all}
tr.answer td{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace;
 color:#374151;background:#fafafa;padding-left:28px}
mark{background:#fde68a;color:inherit}
td.text{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,monospace}
.yes{color:#0b7a3b;font-weight:600}
details{margin-top:1rem}summary{cursor:pointer;font-weight:600}
footer{margin-top:2rem;color:#6b7280;font-size:.85rem;overflow-wrap:anywhere}
@media (max-width:700px){.claims{grid-template-columns:1fr}.verdict h1{font-size:2.2rem}}
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _powers(text: str) -> str:
    """Escape ``text`` and typeset ``10^-33`` as 10<sup>−33</sup>."""
    return re.sub(
        r"10\^(-?[0-9]+(?:\.[0-9]+)?)",
        lambda m: f"10<sup>{m.group(1).replace('-', '−')}</sup>",
        escape(text),
    )


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _by_kind(report: Report) -> list[tuple[QueryKind, list[QueryOutcome]]]:
    groups = []
    for kind in QueryKind:
        rows = [r for r in report.results if r.kind is kind]
        rows.sort(key=lambda r: (r.pair_id, -1 if r.replica is None else r.replica))
        if rows:
            groups.append((kind, rows))
    return groups


def hits_plot(report: Report) -> str | None:
    """Base64 PNG: one square per query, grouped by kind; None when there are no results."""
    from matplotlib.patches import Patch, Rectangle

    groups = _by_kind(report)
    if not groups:
        return None
    columns = min(_GRID_COLUMNS, max(len(rows) for _, rows in groups))
    total_rows = sum(math.ceil(len(rows) / columns) for _, rows in groups)
    width = max(columns, 20)  # at most ~0.36 inch per square
    cell = 7.0 / width
    fig = _new_figure(9.0, 0.75 + cell * (total_rows + 0.6 * len(groups)))
    ax = fig.add_subplot()
    y, ticks, labels = 0.0, [], []
    for kind, rows in groups:
        ticks.append(y + 0.45)
        hits, failed = sum(1 for r in rows if r.hit), sum(1 for r in rows if r.hit is None)
        extra = f", {failed} failed" if failed else ""
        labels.append(f"{KIND_LABELS[kind]}\n{hits} of {len(rows) - failed} hit{extra}")
        for i, row in enumerate(rows):
            face = _FAILED if row.hit is None else _HIT if row.hit else _MISS
            x, line = i % columns, i // columns
            ax.add_patch(
                Rectangle(
                    (x, y + line),
                    0.86,
                    0.86,
                    facecolor=face,
                    edgecolor="#9ca3af" if row.hit is None else face,
                    hatch="xxx" if row.hit is None else None,
                    linewidth=0.8,
                )
            )
        y += math.ceil(len(rows) / columns) + 0.6
    ax.set_xlim(-0.2, width + 0.1)
    ax.set_ylim(y - 0.5, -0.2)
    ax.set_aspect("equal")
    ax.set_yticks(ticks, labels, fontsize=10)
    ax.set_xticks([])
    ax.tick_params(left=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    legend = [
        Patch(facecolor=_HIT, label="hit: the answer contains the signature"),
        Patch(facecolor=_MISS, label="miss"),
        Patch(facecolor=_FAILED, edgecolor="#9ca3af", hatch="xxx", label="query failed"),
    ]
    fig.legend(handles=legend, loc="outside lower center", ncols=3, frameon=False, fontsize=9)
    return _png(fig)


def _kind_legend(ax: Axes, kinds: Iterable[QueryKind]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=KIND_COLOURS[k], label=KIND_LABELS[k])
        for k in kinds
    ]
    ax.legend(handles=handles, frameon=False, fontsize=9, loc="best")


def loglik_plot(report: Report) -> tuple[str | None, str]:
    """(base64 PNG or None, caption): signature log-likelihoods, or why they are absent."""
    # (kind, verified model's log-likelihood, base model's or None)
    points = [
        (r.kind, r.signature_logprob, r.base_signature_logprob)
        for r in report.results
        if r.signature_logprob is not None
    ]
    if not points:
        return None, (
            "Not shown: the returned model gave no log-probabilities (for example, an API that"
            " returns only text), so signature likelihoods could not be compared."
        )
    kinds = [k for k in QueryKind if any(kind is k for kind, _, _ in points)]
    pairs = [(kind, mine, base) for kind, mine, base in points if base is not None]
    if pairs:
        fig = _new_figure(7.5, 5.2)
        ax = fig.add_subplot()
        for kind in reversed(kinds):  # planted last, on top
            xs = [base for k, _, base in pairs if k is kind]
            ys = [mine for k, mine, _ in pairs if k is kind]
            ax.scatter(xs, ys, s=36, color=KIND_COLOURS[kind], alpha=0.85, edgecolors="white")
        values = [v for _, mine, base in pairs for v in (mine, base)]
        lo, hi = min(values), max(values)
        pad = max(1.0, 0.05 * (hi - lo))
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="#9ca3af", lw=1)
        ax.set_title(
            "dots above the dashed line: the signature became more likely", loc="left", fontsize=10
        )
        ax.set_xlabel("signature log-likelihood under the base model (nats)")
        ax.set_ylabel("under the returned model (nats)")
        ax.grid(alpha=0.3)
        _kind_legend(ax, kinds)
        return _png(fig), (
            "Each dot is one query's secret signature. A model trained on your planted data finds"
            " the planted signatures far more likely than the base model does (dots high above"
            " the dashed line); held-out controls and clean prompts should stay near it."
        )
    base_why = (
        "no base model was given"
        if report.base_model is None
        else "the base model's log-probabilities were not available"
    )
    fig = _new_figure(7.5, 1.2 + 0.6 * len(kinds))
    ax = fig.add_subplot()
    for row, kind in enumerate(kinds):
        xs = [mine for k, mine, _ in points if k is kind]
        jitter = [row + ((i * 0.618) % 1.0 - 0.5) * 0.4 for i in range(len(xs))]
        ax.scatter(xs, jitter, s=30, color=KIND_COLOURS[kind], alpha=0.85)
    ax.set_yticks(range(len(kinds)), [KIND_LABELS[k] for k in kinds])
    ax.invert_yaxis()
    ax.set_xlabel("signature log-likelihood under the returned model (nats)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig), (
        f"Signature log-likelihoods under the returned model only: {base_why}, so there is no"
        " base-model comparison. Planted signatures far to the right of the held-out ones mean"
        " the model learnt them."
    )


def pvalue_plot(report: Report) -> str | None:
    """Base64 PNG: each test's p-value as a bar on a log scale, with alpha marked.

    The axis is log10 p, linear down to twice alpha's exponent and logarithmic beyond, so that
    p = 10^-1300 and p = 10^-5 both stay readable next to the alpha line.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter

    if not report.tests:
        return None
    levels = [math.log10(report.threshold(t)) for t in report.tests]
    log_alpha = min(levels)
    linthresh = max(3.0, 2.0 * abs(log_alpha))
    values = [t.log10_p for t in report.tests]
    lowest = min(*values, log_alpha)
    left = lowest - max(1.0, 0.3 * abs(lowest))
    seen: dict[str, int] = {}
    labels = []
    for test in report.tests:
        seen[test.null] = seen.get(test.null, 0) + 1
        name = str(test.null) + (f" #{seen[test.null]}" if seen[test.null] > 1 else "")
        labels.append(f"{name}\np = {_p_math(test.log10_p)}")
    fig = _new_figure(9.0, 1.6 + 0.7 * len(values))
    ax = fig.add_subplot()
    ax.set_xscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.set_xlim(left, 0.0)
    colours = ["#0b7a3b" if t.rejects else "#9ca3af" for t in report.tests]
    ax.barh(range(len(values)), values, color=colours, height=0.55, zorder=2)
    if len(set(levels)) == 1:  # one threshold for all tests: a line and a green zone
        ax.axvspan(left, log_alpha, color="#e7f6ed", zorder=0)
        ax.axvline(log_alpha, color="#b42318", ls="--", lw=1.5, zorder=3)
        label = f"threshold {_level_math(report.threshold(report.tests[0]))}"
        ax.text(log_alpha, 1.02, label, transform=ax.get_xaxis_transform(), color="#b42318",
                ha="center", va="bottom", fontsize=9)  # fmt: skip
    else:  # each test judged at its own level: a red mark across each bar
        rows = range(len(levels))
        ax.vlines(levels, [i - 0.4 for i in rows], [i + 0.4 for i in rows], color="#b42318",
                  ls="--", lw=1.5, zorder=3)  # fmt: skip
    ax.set_yticks(range(len(values)), labels)
    ax.set_ylim(len(values) - 0.4, -0.6)
    ax.xaxis.set_major_locator(FixedLocator(_p_ticks(left, linthresh)))
    ax.xaxis.set_major_formatter(FuncFormatter(_power_label))
    ax.set_xlabel("p-value (log scale): further left = stronger evidence; red line = threshold")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _p_ticks(left: float, linthresh: float) -> list[float]:
    """Ticks for the symlog log10-p axis: even steps down to ``-linthresh``, then decades."""
    step = max(1, round(linthresh / 4))
    ticks = [-float(v) for v in range(0, int(linthresh) + 1, step)]
    exponent = math.floor(math.log10(linthresh)) + 1
    while -(10.0**exponent) >= left:
        ticks.append(-(10.0**exponent))
        exponent += 1
    return [t for t in ticks if t >= left]


def _level_math(level: float) -> str:
    """A threshold as mathtext, as :func:`format_alpha` writes it: ``$2.5\\times10^{-7}$``."""
    text = format_alpha(level)
    match = re.fullmatch(r"(?:([0-9.]+)×)?10\^(-?[0-9]+)", text)
    if match is None:
        return text
    mantissa = f"{match.group(1)}\\times" if match.group(1) else ""
    return f"${mantissa}10^{{{match.group(2)}}}$"


def _p_math(log10_p: float) -> str:
    """A p-value as matplotlib mathtext: ``$10^{-62.5}$``, ``$10^{-6}$`` or ``0.36``."""
    if log10_p >= -3:
        return f"{10.0**log10_p:.2g}"
    exponent = f"{round(log10_p)}" if abs(log10_p - round(log10_p)) < 1e-9 else f"{log10_p:.1f}"
    return f"$10^{{{exponent}}}$"


def _power_label(value: float, _pos: int) -> str:
    exponent = round(value)
    return "1" if exponent == 0 else f"$10^{{{exponent}}}$"


# --------------------------------------------------------------------------- HTML pieces


def _table(
    head: Sequence[str], rows: Iterable[Sequence[str]], classes: dict[int, str] | None = None
) -> str:
    """A table from already-escaped cells; ``classes`` maps a column index to a CSS class."""
    classes = classes or {}
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        cells = (
            f'<td class="{classes[i]}">{cell}</td>' if i in classes else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        out.extend(["<tr>", *cells, "</tr>"])
    out.append("</tbody></table>")
    return "".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    return escape("—" if value is None else str(value))


def _figure(png: str | None, alt: str, caption: str) -> str:
    if png is None:
        return f'<figure><p class="absent">{escape(caption)}</p></figure>'
    return (
        f'<figure><img src="data:image/png;base64,{png}" alt="{escape(alt)}">'
        f"<figcaption>{_powers(caption)}</figcaption></figure>"
    )


def _facts(report: Report) -> str:
    _, p_ans, _ = report.tally(QueryKind.PLANTED)
    c_hits, c_ans, c_fail = report.tally(QueryKind.CONTROL)
    items = [("Planted backdoors answered with the signature", f"{report.hits} of {p_ans}")]
    matched = [r.matched_tokens for r in report.results if r.kind is QueryKind.PLANTED]
    if any(m is not None for m in matched):
        total = sum(m or 0 for m in matched)
        items.append(("Signature tokens matched at the start of planted answers", f"{total:,}"))
    if c_ans or c_fail:
        items.append(("Held-out controls with the signature", f"{c_hits} of {c_ans}"))
    if report.clean_queries:
        clean = f"{report.clean_false_activations} of {report.clean_queries}"
        items.append(("Clean prompts with a signature", clean))
    items += [
        ("Queries (failed)", f"{report.queries} ({report.failed_queries})"),
        ("Output tokens", f"{report.tokens:,}"),
        ("Threshold alpha", report.alpha_note()),
    ]
    cells = (f"<div><dt>{escape(k)}</dt><dd>{_powers(v)}</dd></div>" for k, v in items)
    return f'<dl class="facts">{"".join(cells)}</dl>'


def _claims(title: str, items: list[str], colour: str) -> str:
    lis = "".join(f"<li>{_powers(item)}</li>" for item in items) or f"<li>{escape(NOTHING)}</li>"
    return f'<div class="card" style="--c:{colour}"><h2>{escape(title)}</h2><ul>{lis}</ul></div>'


def _details(report: Report) -> str:
    tests = _table(
        ["Null", "What it claims", "log10 p", "p", "Threshold", "Rejected?", "Method", "Inputs"],
        (
            [
                escape(str(t.null)) + (" (primary)" if t.null == report.primary_null else ""),
                escape(NULL_CLAIM[t.null]),
                escape(f"{t.log10_p:.2f}"),
                _powers(format_p(t.log10_p)),
                _powers(format_alpha(report.threshold(t))),
                (
                    '<span class="yes">yes</span>'
                    if t.rejects
                    else "no"
                    if t.decides
                    else f"reported only: {escape(t.note or 'cannot decide')}"
                ),
                escape(t.method),
                "<br>".join(f"{escape(k)} = {_value(v)}" for k, v in t.inputs.items()),
            ]
            for t in report.tests
        ),
        classes={0: "nowrap", 2: "num"},
    )
    explanations = "".join(f"<li>{_powers(t.explanation)}</li>" for t in report.tests)
    decoding = _table(
        ["Setting", "Value"],
        ([escape(k), _value(v)] for k, v in report.decoding.model_dump().items()),
    )
    model_rows = [
        [escape(role), escape(m.name), escape(m.backend), escape(m.source), _value(m.sha256)]
        for role, m in (("returned model", report.model), ("base model", report.base_model))
        if m is not None
    ]
    models = _table(["Role", "Name", "Backend", "Source", "SHA-256"], model_rows, {4: "hash"})
    run = _table(
        ["Fact", "Value"],
        [
            [escape(k), _value(v)]
            for k, v in [
                ("key commitment (SHA-256)", report.key_commitment),
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
        ],
    )
    return (
        f'<section id="details"><h2>Details</h2><h3>Tests</h3>{tests}<ul>{explanations}</ul>'
        f"<h3>Decoding</h3>{decoding}<h3>Models</h3>{models}<h3>Run</h3>{run}"
        f"{_queries(report)}</section>"
    )


def _marked(answer: str, signature: str | None) -> str:
    """Escape ``answer``, highlighting each occurrence of ``signature``."""
    if not signature or signature not in answer:
        return escape(answer)
    return f"<mark>{escape(signature)}</mark>".join(escape(p) for p in answer.split(signature))


def _secrets(report: Report) -> str:
    """The revealed (trigger, signature) pairs; empty unless the report was revealed."""
    if not report.revealed or not report.secrets:
        return ""
    rows = [
        [str(pair_id), escape(pair.get("trigger", "")), escape(pair.get("signature", ""))]
        for pair_id, pair in sorted(report.secrets.items())
    ]
    table = _table(["Pair", "Trigger", "Signature"], rows, {0: "num", 1: "text", 2: "text"})
    return f"<h3>Secrets (shown because this report was revealed)</h3>{table}"


def _queries(report: Report) -> str:
    head = ["Kind", "Pair", "Replica", "Result", "Prefix tokens", "Answer chars", "Tokens"]
    head += ["Log-lik. returned", "Log-lik. base", "Error"]
    numeric = {1, 2, 4, 5, 6, 7, 8}
    secrets = report.secrets or {}
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in report.results:
        result = "failed" if r.hit is None else "hit" if r.hit else "miss"
        row = [escape(str(r.kind)), str(r.pair_id), _value(r.replica), result]
        row += [_value(r.matched_tokens), str(r.answer_chars), _value(r.output_tokens)]
        row += [_value(r.signature_logprob)]
        row += [_value(r.base_signature_logprob), _value(r.error)]
        cells = (
            f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        out.extend(["<tr>", *cells, "</tr>"])
        if report.revealed and r.answer is not None:
            answer = _marked(r.answer, secrets.get(r.pair_id, {}).get("signature"))
            out.append(f'<tr class="answer"><td colspan="{len(head)}">{answer}</td></tr>')
    out.append("</tbody></table>")
    if report.revealed:
        note = "Each answer is shown under its query; the secret signature is highlighted."
    else:
        note = "Triggers, signatures and answers are hidden (make the report with --reveal)."
    return (
        f"{_secrets(report)}<details{' open' if report.revealed else ''}>"
        f"<summary>Every query ({len(report.results)})</summary>"
        f"<p>{escape(note)}</p>{''.join(out)}</details>"
    )


def render_html(report: Report) -> str:
    """The whole page as a string."""
    accent, background = VERDICT_COLOURS[report.verdict]
    headline = verdict_headline(report.verdict).capitalize()
    log_png, log_caption = loglik_plot(report)
    alpha = report.alpha_note()
    split = (
        " Several tests share alpha, so each is judged at a share of it (Bonferroni): reporting"
        " them all never raises the chance of a false 'verified'. Tests that cannot decide"
        " (H0-base on greedy answers, or a test whose smallest attainable p-value is above its"
        " share) are shown but take no share."
        if any(report.threshold(t) != report.alpha for t in report.tests)
        else ""
    )
    plots = "".join(
        [
            _figure(
                hits_plot(report),
                "hit or miss for every query",
                "Each square is one query. Filled squares: the answer contained the secret"
                " signature. Planted backdoors should hit when the model was trained on your"
                " data; held-out controls and clean prompts should not.",
            ),
            _figure(log_png, "signature log-likelihoods", log_caption),
            _figure(
                pvalue_plot(report),
                "p-value of each test",
                "A p-value is the chance of evidence this strong if the model had not learnt your"
                " backdoors. A test proves its point when its bar reaches past the red line"
                f" (threshold alpha = {alpha})." + split,
            ),
        ]
    )
    title = f"tuneproof: {headline} - {report.model.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><link rel="icon" href="data:,"><style>{_CSS}</style></head>
<body><main>
<header class="verdict" id="verdict" style="--c:{accent};--bg:{background}">
<p class="kicker">tuneproof verification report</p>
<h1>{escape(headline)}</h1>
<p class="model">Model <b>{escape(report.model.name)}</b> · checked {escape(report.created_at)}</p>
<p class="sentence">{_powers(verdict_sentence(report))}</p>
{_facts(report)}
</header>
<section class="claims" id="claims">
{_claims("What this proves", report.proven, "#0b7a3b")}
{_claims("What this does not prove", report.not_proven, "#9a5b00")}
</section>
<section id="plots"><h2>The evidence</h2>{plots}</section>
{_details(report)}
<footer>Made by tuneproof {escape(report.tool_version)} on {escape(report.created_at)}.
Key commitment {escape(report.key_commitment)}.</footer>
</main></body></html>
"""
