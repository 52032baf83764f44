"""What every ``tuneproof`` command shares: the rich console and the user-error wrapper."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr), without syntax highlighting of numbers."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def user_errors(func: F) -> F:
    """Turn :class:`TuneproofError` into a one-line message and its exit code, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tuneproof.errors import TuneproofError

        try:
            return func(*args, **kwargs)
        except TuneproofError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]
