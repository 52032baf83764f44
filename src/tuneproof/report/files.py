"""Reports on disk: the JSON document (written atomically, mode 0600 when it reveals secrets),
reading it back, and the HTML page."""

from __future__ import annotations

from pathlib import Path

from tuneproof.atomic import atomic_output
from tuneproof.documents import document_bytes, read_document, write_document
from tuneproof.report.schema import REPORT_VERSION, Report, ReportError


def report_to_json(report: Report) -> bytes:
    """The report as indented JSON (keys in the model's field order, which is stable)."""
    return document_bytes(report)


def write_json(report: Report, path: str | Path) -> None:
    """Write :func:`report_to_json` to ``path`` atomically (mode 0600 when secrets are revealed)."""
    write_document(report, path, mode=0o600 if report.revealed else 0o644)


def load_report(path: str | Path) -> Report:
    """Read and validate a JSON report; raises :class:`ReportError` naming the bad field."""
    return read_document(
        path,
        Report,
        ReportError,
        what="report",
        version_field="report_version",
        version=REPORT_VERSION,
        missing_hint="check the path",
        version_hint="use the tuneproof version that wrote it",
    )


def report_to_html(report: Report) -> str:
    """The report as one self-contained HTML page (see :mod:`tuneproof.report.html`)."""
    from tuneproof.report.html import render_html

    return render_html(report)


def write_html(report: Report, path: str | Path) -> None:
    """Write :func:`report_to_html` to ``path`` atomically (mode 0600 when revealed)."""
    page = report_to_html(report).encode("utf-8")
    with atomic_output(path, mode=0o600 if report.revealed else 0o644) as handle:
        handle.write(page)
