"""The validation pass over a JSON Lines file: every line parsed and checked, record offsets and
line numbers indexed, in blocks of a few MB read into one reused buffer and parsed in place, so
that memory stays flat whatever the file size; the file's SHA-256 is hashed beside it.

Large files are split at line boundaries and the parts after the first are checked by worker
processes at the same time (parsing is CPU-bound and the GIL keeps threads from helping); the
first bad line of the file is still the one reported. Workers are fresh interpreters started with
``python -m tuneproof.datasets.scan_worker``: not forked (the caller may run threads) and not
multiprocessing's spawn (a caller's script without a ``__main__`` guard would run again).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import filterfalse
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tuneproof.datasets.digests import BackgroundDigest
from tuneproof.datasets.line_blocks import LineBlock, line_blocks
from tuneproof.datasets.records import DatasetFormat
from tuneproof.datasets.schema import (
    detect_format,
    is_valid,
    record_problem,
    unknown_format_problem,
)
from tuneproof.datasets.style import StyleFingerprint, style_fingerprint
from tuneproof.datasets.textfile import (
    BOM,
    NOTHING_WRITTEN,
    file_state,
    gc_paused,
    parse_record_bytes,
)
from tuneproof.errors import DatasetError

PARALLEL_MIN_BYTES = 256 << 20
MAX_WORKERS = 4
_FINE = object()
Int64s = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class JsonlIndex:
    """Where the records of a JSONL file are: byte offset and 1-based line of each record, the
    end of the last record's line, the file's line ending and its (size, mtime_ns) when indexed."""

    starts: Int64s
    lines: Int64s
    records_end: int
    eol: str
    final_newline: bool
    state: tuple[int, int]


@dataclass(frozen=True)
class JsonlScan:
    """The result of scanning a JSONL file: format, whether it was detected, index, and the
    style of the first record."""

    format: DatasetFormat
    detected: bool
    index: JsonlIndex
    first_style: StyleFingerprint


class _Scanner:
    """Validates and indexes consecutive blocks of lines; line numbers count from the first
    block given (1 for the start of the file)."""

    def __init__(self, path: Path, fmt: DatasetFormat | None, detected: bool) -> None:
        self.path = path
        self.format = fmt
        self.detected = detected
        self.valid: Callable[[Any], bool] | None = None if fmt is None else is_valid(fmt)
        self.starts: list[Int64s] = []
        self.lines: list[Int64s] = []
        self.line_base = 1  # line number of the next block's first line
        self.records_end: int | None = None
        self.final_newline = True
        self.eol = "\n"
        self.first_raw = b""

    def block(self, block: LineBlock) -> None:
        """Check and index one run of lines."""
        ends = block.ends
        if self.valid is not None and block.offset > 0 and self._fast(block):
            starts = np.empty(len(ends), np.int64)
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
            self.starts.append(starts + block.offset)
            self.lines.append(np.arange(self.line_base, self.line_base + len(ends), dtype=np.int64))
            self.records_end = block.offset + int(ends[-1]) + block.complete
            self.final_newline = block.complete
        else:
            self._slow(block.offset, block.lines(), block.complete)
        self.line_base += len(ends)

    def _fast(self, block: LineBlock) -> bool:
        """True when every line parses with orjson and is a valid record (no blank lines);
        the lines are parsed in place, from the reader's buffer."""
        assert self.valid is not None
        try:
            records = map(orjson.loads, block.views())
            return next(filterfalse(self.valid, records), _FINE) is _FINE
        except orjson.JSONDecodeError:
            return False

    def _slow(self, offset: int, lines: list[bytes], last_complete: bool) -> None:
        """Line by line: skips blank lines, detects the format, raises precise errors."""
        starts: list[int] = []
        numbers: list[int] = []
        pos = offset
        for i, raw in enumerate(lines):
            start, line = pos, self.line_base + i
            has_newline = last_complete or i < len(lines) - 1
            pos += len(raw) + has_newline
            if start == 0 and raw.startswith(BOM):
                raw, start = raw[len(BOM) :], len(BOM)
            if not raw.strip():
                continue
            try:
                record = parse_record_bytes(raw, self.path, line)
            except DatasetError as e:
                if raw.strip() in (b"{", b"[{") and not self.starts and not starts:
                    hint = (
                        "this looks like one JSON object over several lines: write one record "
                        "per line (JSONL) or a JSON array"
                    )
                    raise DatasetError(self.path, e.message, line=line, hint=hint) from None
                raise
            if self.format is None:
                self.format = detect_format(record)
                if self.format is None:
                    bad = unknown_format_problem(record)
                    raise DatasetError(
                        self.path, bad.message, line=line, field=bad.field, hint=bad.hint
                    )
                self.valid = is_valid(self.format)
            if not starts and not self.starts:
                self.first_raw = raw + b"\n" if has_newline else raw
                self.eol = "\r\n" if raw.endswith(b"\r") else "\n"
            problem = record_problem(record, self.format, self.detected)
            if problem is not None:
                raise DatasetError(
                    self.path,
                    problem.message,
                    line=line,
                    field=problem.field,
                    hint=f"{problem.hint}; {NOTHING_WRITTEN}",
                )
            starts.append(start)
            numbers.append(line)
            self.records_end = pos
            self.final_newline = has_newline
        if starts:
            self.starts.append(np.array(starts, np.int64))
            self.lines.append(np.array(numbers, np.int64))


@dataclass(frozen=True)
class _Part:
    """What a worker found in its part of the file (line numbers relative to the part)."""

    starts: Int64s
    lines: Int64s
    n_lines: int
    records_end: int | None
    final_newline: bool
    error: tuple[int | None, str, str | None, str | None] | None


def scan_part(path: Path, start: int, end: int, fmt: DatasetFormat, detected: bool) -> _Part:
    """Check the lines of ``path[start:end]`` (a worker process's job)."""
    scanner = _Scanner(path, fmt, detected)
    error = None
    try:
        with gc_paused():
            for block in line_blocks(path, start, end):
                scanner.block(block)
    except DatasetError as e:
        error = (e.line, e.message, e.field, e.hint)
    empty = np.empty(0, np.int64)
    return _Part(
        starts=np.concatenate(scanner.starts) if scanner.starts else empty,
        lines=np.concatenate(scanner.lines) if scanner.lines else empty,
        n_lines=scanner.line_base - 1,
        records_end=scanner.records_end,
        final_newline=scanner.final_newline,
        error=error,
    )


def _split_points(path: Path, size: int, parts: int) -> list[int]:
    """Byte offsets 0 = b0 < b1 < ... = size cutting ``path`` into about equal parts at line
    starts."""
    bounds = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(size * k // parts, bounds[-1]))
            f.readline()
            if bounds[-1] < f.tell() < size:
                bounds.append(f.tell())
    return [*bounds, size]


def worker_count(size: int) -> int:
    """How many processes to check a file of ``size`` bytes with: one per CPU (at most
    MAX_WORKERS), or one for files under PARALLEL_MIN_BYTES, where starting a worker
    interpreter (~0.2 s) would cost about what it saves."""
    if size < PARALLEL_MIN_BYTES:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def scan(
    path: Path, fmt: DatasetFormat | None, progress: Callable[[int], None] | None = None
) -> JsonlScan:
    """Validate every record of a JSONL file and index their offsets; a thread hashes the file
    meanwhile (SHA-256, remembered by :mod:`tuneproof.datasets.digests` for the key).

    ``fmt`` None means detect the format from the first record. Raises DatasetError for the
    first bad line (invalid JSON, non-UTF-8, schema problem, mixed formats) or an empty file.
    """
    state = file_state(path)
    size = state[0]
    bounds = _split_points(path, size, worker_count(size))
    scanner = _Scanner(path, fmt, detected=fmt is None)
    workers: list[_Worker] = []
    try:
        with gc_paused(), BackgroundDigest(path, [(0, size)]) as digest:
            for block in line_blocks(path, 0, bounds[1]):
                scanner.block(block)
                if not workers and len(bounds) > 2 and scanner.format is not None:
                    # the format is known: hand the other parts to worker processes
                    workers = [
                        _Worker(path, bounds[k], bounds[k + 1], scanner.format, scanner.detected)
                        for k in range(1, len(bounds) - 1)
                    ]
                if progress is not None:
                    progress(block.offset * size // bounds[1])
            if not workers:  # no record in the first part: go on here
                for block in line_blocks(path, bounds[1]):
                    scanner.block(block)
            parts = [worker.result() for worker in workers]
            found = _merge(path, scanner, parts, state)
            digest.remember_source(state)
    finally:
        for worker in workers:
            worker.stop()
    return found


class _Worker:
    """A process checking ``path[start:end]`` (``python -m tuneproof.datasets.scan_worker``).
    If the process cannot be started or fails, the part is checked here instead."""

    def __init__(
        self, path: Path, start: int, end: int, fmt: DatasetFormat, detected: bool
    ) -> None:
        self.args = (path, start, end, fmt, detected)
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        }
        argv = [
            sys.executable,
            "-m",
            "tuneproof.datasets.scan_worker",
            str(path),
            str(start),
            str(end),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        if not sys.executable:
            return
        try:
            self.proc = subprocess.Popen(
                [*argv, fmt.value, "1" if detected else "0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
        except OSError:
            self.proc = None

    def result(self) -> _Part:
        """The worker's findings (or this process's own, should the worker have failed)."""
        if self.proc is not None:
            out, _ = self.proc.communicate()
            if self.proc.returncode == 0:
                try:
                    part = pickle.loads(out)
                except (pickle.UnpicklingError, EOFError, AttributeError, ValueError):
                    part = None
                if isinstance(part, _Part):
                    return part
        return scan_part(*self.args)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _merge(path: Path, first: _Scanner, parts: list[_Part], state: tuple[int, int]) -> JsonlScan:
    """Join the first part (scanned here) with the workers' parts; raise the first error."""
    starts, lines = list(first.starts), list(first.lines)
    records_end, final_newline = first.records_end, first.final_newline
    lines_before = first.line_base - 1
    for part in parts:
        if part.error is not None:
            line, message, field, hint = part.error
            raise DatasetError(
                path,
                message,
                line=None if line is None else line + lines_before,
                field=field,
                hint=hint,
            )
        starts.append(part.starts)
        lines.append(part.lines + lines_before)
        lines_before += part.n_lines
        if part.records_end is not None:
            records_end, final_newline = part.records_end, part.final_newline
    all_starts = np.concatenate(starts) if starts else np.empty(0, np.int64)
    if first.format is None or records_end is None or not len(all_starts):
        raise DatasetError(
            path, "the file holds no records", hint="give a file with at least one record"
        )
    index = JsonlIndex(
        starts=all_starts,
        lines=np.concatenate(lines),
        records_end=records_end,
        eol=first.eol,
        final_newline=final_newline,
        state=state,
    )
    return JsonlScan(first.format, first.detected, index, style_fingerprint(first.first_raw))
