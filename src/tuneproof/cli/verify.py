"""``tuneproof verify``: query a returned model with a key's prompts and print the verdict.

Its exit code is the verdict (0 verified, 1 not verified, 2 inconclusive) or 2 for anything
that stopped it (the error boundary of :mod:`tuneproof.cli.common`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuneproof.cli.common import (
    api_key_env_option,
    error_boundary,
    report_options,
    warn_if_key_exposed,
)
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
    "--commitment",
    metavar="HASH",
    default=None,
    help="The key's commitment as published before training (`tuneproof key commit`): a key "
    "that does not match is refused before any query (for disputes).",
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
    help="Resumable journal of server answers: a re-run resends nothing. SECRET like the key "
    "(mode 0600): it holds every request and answer - the triggers, also the held-out "
    "controls' that were never uploaded, the signatures scored for log-probs and those a "
    "trained model answers. Delete it once the report is filed.",
)
@click.option(
    "--delete-journal",
    is_flag=True,
    help="Delete the --journal once the reports are written (kept when queries failed, or the "
    "run stopped, for resuming).",
)
@click.option(
    "--chat-template-from",
    default=None,
    help="Tokenizer whose chat template renders prompts for server log-probs "
    "(a folder, a .gguf or 'embedded').",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Give up on server requests not answered this many seconds after the start "
    "(each counts as a failed query).  [default: none]",
)
@api_key_env_option
@error_boundary(2)
def verify(
    key_path: Path,
    commitment: str | None,
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
    delete_journal: bool,
    chat_template_from: str | None,
    deadline: float | None,
    api_key_env: str,
) -> None:
    """Verify a returned model against a key; exit 0 verified, 1 not, 2 inconclusive or error."""
    from tuneproof.api import verify as run_verify
    from tuneproof.cli.progress import progress_display
    from tuneproof.report.files import write_html, write_json
    from tuneproof.report.terminal import print_summary
    from tuneproof.report.wording import exit_code

    warn_if_key_exposed(key_path)
    for out in (json_out, html_out):
        if out is not None:
            check_writable(out, TuneproofError, what="report")
    if deadline is not None and base_url is None:
        raise TuneproofError("--deadline bounds server requests: give --base-url, or drop it")
    with progress_display() as hook:
        report = run_verify(
            key_path,
            model_spec,
            commitment=commitment,
            base_url=base_url,
            base_model=base_model,
            alpha=alpha,
            sequential=sequential,
            max_queries=max_queries,
            reveal=reveal,
            journal=journal,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
            deadline=deadline,
            progress=hook,
        )
    if json_out:
        write_json(report, json_out)
    if html_out:
        write_html(report, html_out)
    print_summary(report, _console())
    _after_the_run(journal, delete_journal, report.failed_queries)
    sys.exit(exit_code(report))


def _after_the_run(journal: Path | None, delete: bool, failed: int) -> None:
    """Delete the secret journal of a finished run (``delete``, and no query failed: a re-run
    with it would send only those), or say once that it holds the key's secrets. An empty
    journal (nothing was answered) holds nothing to resume from."""
    if journal is None or not journal.expanduser().is_file():
        return
    path = journal.expanduser()
    empty = path.stat().st_size == 0
    if empty and not delete:
        return
    if delete and (empty or not failed):
        try:
            path.unlink()
        except OSError as exc:
            click.echo(f"cannot delete the journal {path} ({exc.strerror}): delete it", err=True)
        else:
            click.echo(f"deleted the journal {path}")
    elif delete:
        click.echo(
            f"kept the journal {path} for resuming: {failed} quer{'y' if failed == 1 else 'ies'}"
            " failed, and a re-run with it sends only those; it holds your key's secrets: delete"
            " it once the report is filed"
        )
    else:
        click.echo(
            f"the journal {path} holds your key's secrets: delete it once the report is filed"
            " (or pass --delete-journal)"
        )
