"""The report page's three figures, as base64 PNG: a hit/miss grid, the signature
log-likelihoods, and each test's p-value against its threshold.

matplotlib is imported lazily (inside the functions, so only when a page is rendered) and used
through its object-oriented API with the Agg canvas, so drawing never touches pyplot or the
process's default backend.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tuneproof.stats.phrases import format_alpha
from tuneproof.types import QueryKind

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tuneproof.report.schema import Report
    from tuneproof.verification.result import QueryOutcome

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
