"""What every ``tuneproof`` command shares: the rich console, the error boundary, the warning
about a key file other users can read."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr), without syntax highlighting of numbers."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


api_key_env_option = click.option(
    "--api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    help="Environment variable holding the server's API key.",
)
"""``--api-key-env``, shared by the commands that can talk to a server."""


def report_options(func: F) -> F:
    """``--json`` and ``--html``: where to write a command's reports (shared by verify and
    audit)."""
    func = click.option(
        "--html",
        "html_out",
        type=click.Path(path_type=Path),
        default=None,
        help="Write the HTML report here.",
    )(func)
    return click.option(
        "--json",
        "json_out",
        type=click.Path(path_type=Path),
        default=None,
        help="Write the JSON report here.",
    )(func)


def warn_if_key_exposed(path: Path) -> None:
    """One warning line on stderr (not an error) when the key file at ``path`` is readable or
    writable by other users: it holds the seed, every trigger and signature. Silent when the
    file cannot be examined (loading it then says why) and on systems without POSIX modes."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    access = [word for word, bits in (("readable", 0o044), ("writable", 0o022)) if mode & bits]
    if access:
        click.echo(
            f"warning: {path} is {' and '.join(access)} by other users (mode {mode:04o})"
            f" - run chmod 600 {shlex.quote(str(path))}",
            err=True,
        )


def error_boundary(failure: int = 1) -> Callable[[F], F]:
    """The one place where a command's failures become a message and an exit code.

    Every way a command can fail without finishing - a :class:`TuneproofError` (bad input, a
    missing file, a server that refuses), an operating-system error while writing, Ctrl-C, or
    a crash (a bug) - prints one line on stderr and exits with ``failure``, the code the
    command documents for "did not finish" (``verify``: 2, so that scripts never read a failure
    as "not verified"; the other commands: 1). ``TUNEPROOF_TRACEBACK=1`` re-raises instead,
    to see where a crash came from. Outputs are written atomically, so none is left behind."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from tuneproof.errors import TuneproofError

            try:
                return func(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit):
                raise  # click's own usage errors and exits keep their codes
            except Exception as exc:
                if os.environ.get("TUNEPROOF_TRACEBACK") == "1" and not isinstance(
                    exc, TuneproofError
                ):
                    raise
                click.echo(f"Error: {describe_failure(exc)}", err=True)
                sys.exit(failure)
            except KeyboardInterrupt:
                click.echo("Interrupted: nothing was finished or left half-written.", err=True)
                sys.exit(failure)

        return wrapper  # type: ignore[return-value]

    return decorate


user_errors = error_boundary(1)
"""The boundary of the commands whose failure exit code is 1."""


def describe_failure(exc: BaseException) -> str:
    """One line for the user: a tuneproof error's own message, an OS error's file and reason,
    or, for anything else (a bug), its type and message with what to do next."""
    from tuneproof.errors import TuneproofError

    if isinstance(exc, TuneproofError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror}"
    text = " ".join(str(exc).split())[:300]
    return (
        f"internal error ({type(exc).__name__}{': ' + text if text else ''}) - this is a bug in"
        " tuneproof; rerun with TUNEPROOF_TRACEBACK=1 and report the traceback"
    )
