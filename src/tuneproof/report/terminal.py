"""The verification report in the terminal: verdict banner, tests table, counts, claims."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tuneproof.report.schema import Report
from tuneproof.report.wording import (
    NOTHING,
    answered_fraction,
    exit_code,
    failure_lines,
    verdict_headline,
    verdict_sentence,
)
from tuneproof.stats.phrases import format_alpha
from tuneproof.types import QueryKind, Verdict

if TYPE_CHECKING:
    from rich.console import Console

VERDICT_COLOUR: dict[Verdict, str] = {
    Verdict.VERIFIED: "green",
    Verdict.NOT_VERIFIED: "red",
    Verdict.INCONCLUSIVE: "yellow",
}


def print_summary(report: Report, console: Console) -> None:
    """Print the verdict, the tests, the hit counts and the claims to ``console``."""
    from rich.table import Table
    from rich.text import Text

    colour = VERDICT_COLOUR[report.verdict]
    console.print(
        Text(f" {verdict_headline(report.verdict)} ", style=f"bold white on {colour}"),
        Text(f"  exit code {exit_code(report)}", style="dim"),
    )
    console.print(Text(verdict_sentence(report), style=f"bold {colour}"))
    console.print()

    table = Table(title="Tests", title_justify="left", expand=False)
    table.add_column("null", no_wrap=True)
    table.add_column("log10 p", justify="right", no_wrap=True)
    table.add_column("alpha (this test)", justify="right", no_wrap=True)
    table.add_column("rejected?", justify="center", no_wrap=True)
    table.add_column("method")
    for test in report.tests:
        mark = "primary" if test.null == report.primary_null else ""
        table.add_row(
            f"{test.null} {mark}".strip(),
            f"{test.log10_p:.2f}",
            format_alpha(report.threshold(test)),
            (
                Text("yes", style="bold green")
                if test.rejects
                else Text("no")
                if test.decides
                else Text("reported only", style="dim")
            ),
            test.method,
        )
    if not report.tests:
        table.add_row("(none)", "-", format_alpha(report.alpha), "-", "no test could run")
    console.print(table)
    console.print(f"alpha: {report.alpha_note()}")
    for test in report.tests:
        if not test.decides and test.note:
            console.print(Text(f"{test.null} ({test.method}): {test.note}", style="dim"))

    _, p_ans, p_fail = report.tally(QueryKind.PLANTED)
    c_hits, c_ans, c_fail = report.tally(QueryKind.CONTROL)
    console.print(f"planted hits: {answered_fraction(report.hits, p_ans, p_fail)}")
    matched = [r.matched_tokens for r in report.results if r.kind is QueryKind.PLANTED]
    if any(m is not None for m in matched):
        console.print(
            f"signature tokens matched at the start of planted answers: "
            f"{sum(m or 0 for m in matched)} over {len(matched)} queries"
        )
    if c_ans or c_fail:
        console.print(f"held-out control hits: {answered_fraction(c_hits, c_ans, c_fail)}")
    n_hits, n_ans, n_fail = report.tally(QueryKind.CLEAN)
    if n_ans or n_fail:
        console.print(f"clean false activations: {answered_fraction(n_hits, n_ans, n_fail)}")
    stop = ", stopped early" if report.stopped_early else ""
    mode = "sequential" if report.sequential else "all at once"
    console.print(
        f"queries: {report.queries} ({report.failed_queries} failed; {mode}{stop}); "
        f"output tokens: {report.tokens}"
    )
    for line in failure_lines(report):
        console.print(Text(line, style="yellow"), soft_wrap=True)
    console.print(f"model: {report.model.name} ({report.model.backend}, {report.model.source})")
    console.print(
        f"key commitment: {report.key_commitment} - {report.commitment_note()}", soft_wrap=True
    )
    if note := report.key_integrity_note():
        console.print(Text(f"key: {note}", style="yellow"))
    _print_list(console, "What this proves", report.proven, "green")
    _print_list(console, "What this does not prove", report.not_proven, "yellow")


def _print_list(console: Console, title: str, items: Iterable[str], colour: str) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print()
    console.print(Text(title, style=f"bold {colour}"))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for line in list(items) or [NOTHING]:
        grid.add_row("  •", line)
    console.print(grid)
