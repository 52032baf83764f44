"""The verification report: a versioned pydantic model, its JSON form, the exit code, a terminal
summary (:mod:`tuneproof.report.terminal`) and a self-contained HTML page (built by
:mod:`tuneproof.report.html`).

The JSON document is a stable interface for scripts. Its top-level keys include ``verdict``
(``"verified"``, ``"not verified"`` or ``"inconclusive"``), ``tests`` (each with ``null`` —
``"H0-base"``, ``"H0-indep"`` or ``"H0-controls"`` — and ``log10_p``), ``queries``, ``hits``,
``model`` and ``decoding``; ``report_version`` changes whenever an existing key changes meaning.
Secrets (triggers, signatures) and the model's answers are stored only when the report was made
with ``revealed=True``; the model refuses them otherwise, so a shared report cannot leak them.
"""

from __future__ import annotations

from typing import Literal

from tuneproof.errors import TuneproofError
from tuneproof.verification.result import Verification

REPORT_VERSION: Literal[1] = 1


class ReportError(TuneproofError):
    """A report file is missing, unreadable, or does not validate."""


class Report(Verification):
    """A verification report (version 1): the verification's record plus its plain-English
    claims. See the module docstring for the stable keys."""

    proven: list[str]
    not_proven: list[str]
