"""Errors that reach the user: each says what went wrong, where, and what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TuneproofError(Exception):
    """An error caused by the user's input or environment, shown without a traceback.

    The CLI prints ``str(error)`` and exits with ``exit_code``.
    """

    exit_code: int = 1


class DatasetError(TuneproofError):
    """A problem in a dataset file, located by file, line (1-based) and field when known."""

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.field = field
        self.message = message
        self.hint = hint
        where = str(path) if line is None else f"{path}:{line}"
        text = f"{where}: {message}"
        if field is not None:
            text = f"{where}: field '{field}': {message}"
        if hint:
            text += f" - {hint}"
        super().__init__(text)


class KeyFileError(TuneproofError):
    """The key file is missing, unreadable, or does not validate."""


class GeneratorError(TuneproofError):
    """A model (a signature generator or a model under verification) cannot be loaded or used."""


class LogprobsUnavailable(GeneratorError):
    """The backend cannot give log-likelihoods (e.g. a server without ``logprobs`` or echo): the
    tests that need them are skipped, the others still run."""


def describe_validation_error(exc: Any) -> str:
    """The first problem of a pydantic ``ValidationError`` as "field 'a.b': message", plus how
    many more there are. Never includes the offending value (it may be a secret)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"field '{where}': {first['msg']}{more}"
