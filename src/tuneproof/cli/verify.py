"""``tuneproof verify``: query a returned model with a key's prompts and print the verdict.

Its exit code is the verdict (0 verified, 1 not verified, 2 inconclusive) or 2 for anything
that stopped it (the error boundary of :mod:`tuneproof.cli.common`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuneproof.cli.common import api_key_env_option, error_boundary, report_options
from tuneproof.cli.common import console as _console
from tuneproof.documents import check_writable
from tuneproof.errors import TuneproofError


@click.command()
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The key written by `tuneproof plant`.",
)
@click.option(
    "--model",
    "model_spec",
    required=True,
    help="Model to verify: 'embedded', an HF/adapter folder, a .gguf file, "
    "or a model name on --base-url.",
)
@click.option(
    "--base-url", default=None, help="OpenAI-compatible server (API key from $OPENAI_API_KEY)."
)
@click.option(
    "--base-model",
    default=None,
    help="The base model, for H0-base (local: 'embedded', a folder or a .gguf).",
)
@click.option(
    "--alpha",
    type=float,
    default=1e-6,
    show_default=True,
    help="Significance level of the verdict.",
)
@click.option("--sequential", is_flag=True, help="Stop querying as soon as the verdict is reached.")
@click.option("--max-queries", type=int, default=None, help="Cap on planted queries.")
@report_options
@click.option(
    "--reveal", is_flag=True, help="Show triggers, signatures and answers in the reports (secret!)."
)
@click.option(
    "--journal",
    type=click.Path(path_type=Path),
    default=None,
    help="Resumable journal of server answers (mode 0600); a re-run resends nothing.",
)
@click.option(
    "--chat-template-from",
    default=None,
    help="Tokenizer whose chat template renders prompts for server log-probs "
    "(a folder, a .gguf or 'embedded').",
)
@api_key_env_option
@error_boundary(2)
def verify(
    key_path: Path,
    model_spec: str,
    base_url: str | None,
    base_model: str | None,
    alpha: float,
    sequential: bool,
    max_queries: int | None,
    json_out: Path | None,
    html_out: Path | None,
    reveal: bool,
    journal: Path | None,
    chat_template_from: str | None,
    api_key_env: str,
) -> None:
    """Verify a returned model against a key; exit 0 verified, 1 not, 2 inconclusive or error."""
    from tuneproof.api import verify as run_verify
    from tuneproof.report.files import write_html, write_json
    from tuneproof.report.terminal import print_summary
    from tuneproof.report.wording import exit_code

    for out in (json_out, html_out):
        if out is not None:
            check_writable(out, TuneproofError, what="report")
    report = run_verify(
        key_path,
        model_spec,
        base_url=base_url,
        base_model=base_model,
        alpha=alpha,
        sequential=sequential,
        max_queries=max_queries,
        reveal=reveal,
        journal=journal,
        chat_template_from=chat_template_from,
        api_key_env=api_key_env,
    )
    if json_out:
        write_json(report, json_out)
    if html_out:
        write_html(report, html_out)
    print_summary(report, _console())
    sys.exit(exit_code(report))
