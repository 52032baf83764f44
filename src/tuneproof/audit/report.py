"""The stealth audit's report: a pydantic model, JSON (atomic), a terminal table and HTML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from tuneproof import __version__
from tuneproof.atomic import atomic_output
from tuneproof.types import now_utc

if TYPE_CHECKING:
    from rich.console import Console

EASY_AUROC = 0.8
ADVICE = {
    "repeated": "replicas share a trigger and a signature: plant more pairs with fewer replicas "
    "(--replicas 1 --n 20 gives distinct signatures)",
    "length": "signatures are longer than the data's answers: lower --m (and raise --k to keep "
    "the bits)",
    "perplexity": "signatures are more (or less) likely than the data's answers under a language "
    "model: choose --k so that their likelihood matches the data (docs/defaults.md)",
    "relevance": "signatures ignore the question: nothing in the sampler conditions on meaning; "
    "plant more pairs so that dropping the least relevant answers costs more data",
    "format": "backdoor records are written unlike their neighbours - please report this as a "
    "tuneproof bug with the file's style",
    "extension": "backdoor prompts extend (or nearly copy) another record's prompt: plant into "
    "the carriers in place rather than beside copies of them, and deduplicate the data before "
    "planting so that no other copy of a carrier's prompt remains",
    "naturalness": "triggers read likelier than the text they end (they are the generator's own "
    "continuation): use fewer --trigger-tokens, or a --generator unlike the models a provider "
    "would score with",
    "learned": "a provider who runs tuneproof plant itself learns what its backdoors look like: "
    "default signatures are the generator's top-k tokens and can be recognised by walking them "
    "against that model; a --generator the provider does not have makes this harder (natural "
    "signatures are planned, docs/stealth.md)",
    "combined": "several weak signals add up; see the detectors above",
}


class DetectorResult(BaseModel):
    """How well one detector finds the backdoors."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    auroc: float = Field(
        ge=0.5, le=1.0, description="AUROC in the detector's more revealing direction"
    )
    direction: Literal["high", "low"] = Field(
        description="'high': backdoors score high; 'low': they score low (sorted reversed)"
    )
    survivors: dict[str, int] = Field(
        description="drop share ('0.01', '0.05', '0.1') -> backdoors left after dropping the "
        "detector's most suspicious records of that share"
    )
    cheater_share: float = Field(
        gt=0.0,
        le=1.0,
        description="share of the data, in this detector's order, holding every backdoor",
    )


class AuditReport(BaseModel):
    """A stealth audit (version 1). Holds no trigger and no signature."""

    model_config = ConfigDict(extra="forbid")

    audit_version: Literal[1] = 1
    tool_version: str = __version__
    created_at: str = Field(default_factory=now_utc)
    planted: str
    records: int
    backdoors: int
    reference_model: str | None
    detectors: list[DetectorResult]
    best_cheater_share: float
    best_cheater_detector: str
    warnings: list[str]


def easy_detectors(report: AuditReport) -> list[DetectorResult]:
    """The detectors whose AUROC exceeds EASY_AUROC."""
    return [d for d in report.detectors if d.auroc > EASY_AUROC]


def warnings_for(detectors: list[DetectorResult]) -> list[str]:
    """One warning per detector that finds the backdoors easily, with the setting to change."""
    return [
        f"the '{d.name}' detector finds the backdoors easily (AUROC {d.auroc:.2f} > "
        f"{EASY_AUROC}): {ADVICE.get(d.name, 'change the plant settings')}"
        for d in detectors
        if d.auroc > EASY_AUROC
    ]


def write_json(report: AuditReport, path: str | Path) -> None:
    """Write the report as indented JSON, atomically."""
    with atomic_output(path) as handle:
        handle.write(orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
        handle.write(b"\n")


def print_audit(report: AuditReport, console: Console) -> None:
    """The per-detector table, the best cheater's cost and the warnings."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"tuneproof audit: {report.planted}", title_justify="left")
    table.add_column("detector", style="bold", no_wrap=True)
    table.add_column("AUROC", justify="right")
    shares = list(report.detectors[0].survivors) if report.detectors else []
    for share in shares:
        table.add_column(f"left after top {float(share):.0%} dropped", justify="right")
    table.add_column("cheater trains on", justify="right")
    for d in report.detectors:
        colour = "red" if d.auroc > EASY_AUROC else ("yellow" if d.auroc > 0.65 else "green")
        table.add_row(
            d.name,
            Text(f"{d.auroc:.3f}", style=colour),
            *(f"{d.survivors[s]}/{report.backdoors}" for s in shares),
            f"{d.cheater_share:.1%}",
        )
    console.print(table)
    console.print(
        f"{report.backdoors} backdoors among {report.records:,} records. The cheapest cheater "
        f"('{report.best_cheater_detector}') must train on {report.best_cheater_share:.1%} of "
        "the data to keep every backdoor."
    )
    for warning in report.warnings:
        console.print(Text(f"warning: {warning}", style="bold yellow"))
    if not report.warnings:
        console.print(Text("No detector finds the backdoors easily.", style="green"))


def write_html(report: AuditReport, path: str | Path) -> None:
    """A self-contained HTML page with the audit table, atomically."""
    from tuneproof.report.html import render

    shares = list(report.detectors[0].survivors) if report.detectors else []
    detectors = [
        {
            "easy": d.auroc > EASY_AUROC,
            "name": d.name,
            "description": d.description,
            "auroc": f"{d.auroc:.3f}",
            "survivors": [f"{d.survivors[s]}/{report.backdoors}" for s in shares],
            "cheater_share": f"{d.cheater_share:.1%}",
        }
        for d in report.detectors
    ]
    page = render(
        "audit.html.j2",
        report=report,
        records=f"{report.records:,}",
        shares=[f"{float(s):.0%}" for s in shares],
        detectors=detectors,
        best_cheater_share=f"{report.best_cheater_share:.1%}",
    )
    with atomic_output(path) as handle:
        handle.write(page.encode())
