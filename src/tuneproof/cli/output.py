"""What the ``tuneproof`` commands print: the plant summary, the demo table (progress:
:mod:`tuneproof.cli.progress`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tuneproof.cli.common import console as _console

if TYPE_CHECKING:
    from tuneproof.lab.demo import ProviderRun
    from tuneproof.planting.planter import PlantSummary


_ANSWER_WORDS = {
    "opening": "whose answer now opens with the signature's sentence",
    "carrier": "whose own answer now follows the signature's sentence",
    "generator": "whose answer is replaced by the signature and the generator's text",
    "signature": "whose answer is replaced by the signature",
}


def print_plant_summary(summary: PlantSummary, stage_times: str | None = None) -> None:
    """Print what plant did as a table (no trigger or signature is shown), then
    ``stage_times`` (how long each stage took) when given."""
    from rich.table import Table

    table = Table(title="tuneproof plant", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    estimated = " (estimated from a sample)" if summary.input_tokens_estimated else ""
    rows = [
        ("input", f"{summary.input} ({summary.format}, {summary.container})"),
        (
            "records",
            f"{summary.records:,}, {summary.backdoors:,} of them now carry backdoors "
            f"({summary.backdoors / max(1, summary.records):.2%}; none added)",
        ),
        (
            "backdoors",
            f"{summary.backdoors} records = {summary.pairs} secret pairs x {summary.replicas} "
            f"replica{'' if summary.replicas == 1 else 's'}, each in place of its carrier "
            f"({_ANSWER_WORDS.get(summary.answer, _ANSWER_WORDS['signature'])})",
        ),
        ("held-out controls", f"{summary.controls} pairs (kept in the key only)"),
        ("decoys", f"{summary.decoys} per pair (kept in the key only)"),
        (
            "signature entropy",
            f"{summary.bits_per_signature:.0f} bits (K={summary.k}, m={summary.m} tokens)",
        ),
        (
            "tokens written (triggers, signatures, their sentences)",
            f"{summary.added_tokens:,} = {summary.added_token_share:.2%} of "
            f"{summary.input_tokens:,} input tokens{estimated}",
        ),
        ("planted file", str(summary.output)),
        ("key (secret, mode 0600)", str(summary.key)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    from rich.markup import escape

    _console().print(table)
    if stage_times:
        click.echo(stage_times)
    for warning in summary.warnings:
        _console().print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
    click.echo(f"commitment (safe to publish now): {summary.commitment}")
    click.echo(
        f"Upload {summary.output} to your provider. Keep {summary.key} private: it is the "
        "only way to verify the returned model."
    )


def print_provider_table(runs: list[ProviderRun]) -> None:
    """The demo's providers side by side: verdict, each test's log10 p, hits, queries, tokens."""
    from rich.table import Table

    from tuneproof.report.wording import strongest_by_null, verdict_headline

    nulls = list(dict.fromkeys(t.null for run in runs for t in run.report.tests))
    table = Table(
        title="tuneproof demo: three providers, one key (strongest log10 p per null)",
        title_justify="left",
    )
    table.add_column("provider", style="bold", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for null in nulls:
        table.add_column(str(null), justify="right", no_wrap=True)
    for name in ("hits", "queries", "tokens out", "trained on", "time"):
        table.add_column(name, justify="right", no_wrap=True)
    for run in runs:
        report = run.report
        p = {
            null: f"{t.log10_p:.1f}" + (" *" if t.rejects else "")
            for null, t in strongest_by_null(report.tests).items()
        }
        table.add_row(
            run.cheat or "honest",
            verdict_headline(report.verdict),
            *(p.get(null, "-") for null in nulls),
            f"{report.hits}/{run.backdoors_planted}",
            str(report.queries),
            f"{report.tokens:,}",
            f"{run.records_trained:,} rec.",
            f"{run.seconds:.0f} s",
        )
    console = _console()
    if console.width < 100:
        console.width = 100  # a narrower table would abbreviate every number
    console.print(table)
    console.print("* the test rejected its null at its share of alpha = 1e-6")
