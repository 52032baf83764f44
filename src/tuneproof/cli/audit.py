"""``tuneproof audit``: how easily could a provider find the backdoors (tuneproof.audit)."""

from __future__ import annotations

from pathlib import Path

import click

from tuneproof.audit.registry import DETECTORS, default_detectors
from tuneproof.cli.common import console, report_options, user_errors
from tuneproof.cli.progress import progress_display


def detectors_help() -> str:
    """The --detectors help: every registered detector with its description."""
    listed = "; ".join(f"{name}: {spec.description}" for name, spec in DETECTORS.items())
    return f"Comma-separated detectors to run. Registered: {listed}."


@click.command()
@click.argument("planted", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The plant's key (used only to score the detectors, after they ran).",
)
@click.option(
    "--detectors",
    default=",".join(default_detectors()),
    show_default=True,
    help=detectors_help(),
)
@click.option(
    "--reference-model",
    default="embedded",
    show_default=True,
    help="Model of the detectors that read one (perplexity, naturalness, learned): "
    "'embedded', an HF folder or a .gguf file.",
)
@report_options
@user_errors
def audit(
    planted: Path,
    key_path: Path,
    detectors: str,
    reference_model: str,
    json_out: Path | None,
    html_out: Path | None,
) -> None:
    """Measure how easily a provider could find the backdoors of a planted file."""
    from tuneproof.audit import audit as run_audit
    from tuneproof.audit.report import print_audit, write_html, write_json

    names = [d.strip() for d in detectors.split(",") if d.strip()]
    with progress_display() as hook:
        report = run_audit(
            planted, key_path, detectors=names, reference_model=reference_model, progress=hook
        )
    print_audit(report, console())
    if json_out:
        write_json(report, json_out)
    if html_out:
        write_html(report, html_out)
