"""JSON arrays of records (``[{...}, {...}]``, one line or pretty-printed): streamed through a
sliding text window decoded incrementally, so memory is bounded by the largest record, not the
file. Writing copies every byte untouched (separators, line breaks, indentation included) except
the span of each replaced element, where its new record goes, written in the style of the element
it replaces and its neighbours.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tuneproof.atomic import atomic_output
from tuneproof.datasets.records import DatasetFormat, Record
from tuneproof.datasets.render import ReplacementStyles
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
    REENCODE_HINT,
    check_unchanged,
    copy_range,
    file_state,
    gc_paused,
    parse_record_bytes,
    read_blocks,
    write_all,
)
from tuneproof.errors import DatasetError

BLOCK = 1 << 20
_WS = re.compile(r"[ \t\r\n]*")


@dataclass(frozen=True)
class ArrayIndex:
    """Where the records of a JSON array file are: byte spans and 1-based start lines of each
    element, the whitespace after ``[``, and the file's (size, mtime_ns) when indexed."""

    starts: np.ndarray[Any, np.dtype[np.int64]]
    ends: np.ndarray[Any, np.dtype[np.int64]]
    lines: np.ndarray[Any, np.dtype[np.int64]]
    open_ws: str
    state: tuple[int, int]


class _Window:
    """A decoded window over a UTF-8 file that tracks byte offset, line and column of its cursor."""

    def __init__(self, f: BinaryIO, path: Path, start: int) -> None:
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.i = "", 0
        self.byte, self.line, self.col_base = start, 1, 0
        self.eof = False

    def more(self) -> bool:
        """Read more text (at least as much as is buffered); False at end of file."""
        if self.eof:
            return False
        if self.i > BLOCK:  # drop what was consumed, remembering the column it leaves behind
            dropped = self.buf[: self.i]
            nl = dropped.rfind("\n")
            self.col_base = len(dropped) - nl - 1 if nl >= 0 else self.col_base + len(dropped)
            self.buf, self.i = self.buf[self.i :], 0
        chunk = self.f.read(max(BLOCK, len(self.buf)))
        self.eof = not chunk
        try:
            self.buf += self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError as e:
            line = self.line + self.buf.count("\n", self.i) + chunk.count(b"\n", 0, e.start)
            raise DatasetError(
                self.path,
                f"not valid UTF-8 (byte 0x{chunk[e.start]:02x})",
                line=line,
                hint=REENCODE_HINT,
            ) from None
        return not self.eof or bool(chunk)

    def advance(self, j: int) -> None:
        seg = self.buf[self.i : j]
        self.byte += len(seg) if seg.isascii() else len(seg.encode("utf-8"))
        self.line += seg.count("\n")
        self.i = j

    def skip_ws(self) -> str:
        """Skip whitespace; return the skipped text and leave the cursor on the next character."""
        skipped = []
        while True:
            m = _WS.match(self.buf, self.i)
            assert m is not None
            skipped.append(m.group())
            self.advance(m.end())
            if self.i < len(self.buf) or not self.more():
                return "".join(skipped)

    def peek(self) -> str:
        return self.buf[self.i] if self.i < len(self.buf) else ""

    def column(self, pos: int) -> int:
        nl = self.buf.rfind("\n", 0, pos)
        return pos - nl if nl >= 0 else self.col_base + pos + 1

    def error(self, what: str, pos: int | None = None, detail: str = "") -> DatasetError:
        """A DatasetError "<what> (<detail> at column N)" located at buffer position ``pos``."""
        pos = self.i if pos is None else pos
        line = self.line + self.buf.count("\n", self.i, pos)
        where = f"at column {self.column(pos)}"
        return DatasetError(
            self.path,
            f"{what} ({detail} {where})" if detail else f"{what} ({where})",
            line=line,
            hint=f"fix the file; {NOTHING_WRITTEN}",
        )

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decode the JSON value at the cursor, reading more text while it is incomplete."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.i)
                break
            except json.JSONDecodeError as e:
                incomplete = e.pos >= len(self.buf) - 64 or e.msg.startswith("Unterminated string")
                if not (incomplete and self.more()):
                    raise self.error("invalid JSON", e.pos, e.msg) from None
        self.advance(end)
        return value


def _elements(path: Path, start: int) -> Iterator[tuple[int, int, int, Any, str]]:
    """Yield (start byte, end byte, start line, value, whitespace before it) for each element of
    the top-level array of ``path``; raises DatasetError for anything that is not such an array."""
    decoder = json.JSONDecoder()
    with open(path, "rb") as f:
        f.seek(start)
        w = _Window(f, path, start)
        w.more()
        w.skip_ws()
        if w.peek() != "[":
            raise w.error("expected a JSON array", detail="no '['")
        w.advance(w.i + 1)
        ws = w.skip_ws()
        if w.peek() == "]":
            w.advance(w.i + 1)
        else:
            while True:
                begin, line = w.byte, w.line
                value = w.value(decoder)
                yield begin, w.byte, line, value, ws
                w.skip_ws()
                c = w.peek()
                w.advance(w.i + 1)
                if c == "]":
                    break
                if c != ",":
                    raise w.error("invalid JSON", w.i - 1, "expected ',' or ']' after a record")
                ws = w.skip_ws()
                if w.peek() == "]":
                    raise w.error("invalid JSON", detail="a comma after the last record")
        w.skip_ws()
        if w.peek():
            raise w.error("unexpected text after the end of the array")


def scan(
    path: Path,
    fmt: DatasetFormat | None,
    has_bom: bool,
    progress: Callable[[int], None] | None = None,
) -> tuple[DatasetFormat, bool, ArrayIndex, StyleFingerprint]:
    """Validate every element of a JSON array file in one streaming pass and index their spans.

    Returns (format, whether it was detected, index, style of the first record). Raises
    DatasetError for the first problem, naming its line.
    """
    state = file_state(path)
    detected = fmt is None
    valid = None if fmt is None else is_valid(fmt)
    starts: list[int] = []
    ends: list[int] = []
    lines: list[int] = []
    open_ws = ""
    with gc_paused():
        for begin, end, line, value, ws in _elements(path, len(BOM) if has_bom else 0):
            if fmt is None:
                fmt = detect_format(value)
                if fmt is None:
                    bad = unknown_format_problem(value)
                    raise DatasetError(path, bad.message, line=line, field=bad.field, hint=bad.hint)
                valid = is_valid(fmt)
            assert valid is not None
            if not valid(value) and (problem := record_problem(value, fmt, detected)) is not None:
                raise DatasetError(
                    path,
                    problem.message,
                    line=line,
                    field=problem.field,
                    hint=f"{problem.hint}; {NOTHING_WRITTEN}",
                )
            if not starts:
                open_ws = ws
            starts.append(begin)
            ends.append(end)
            lines.append(line)
            if progress is not None and len(starts) % 1000 == 0:
                progress(end)
    if fmt is None or not starts:
        raise DatasetError(
            path, "the JSON array holds no records", hint="give a file with at least one record"
        )
    index = ArrayIndex(
        starts=np.array(starts, np.int64),
        ends=np.array(ends, np.int64),
        lines=np.array(lines, np.int64),
        open_ws=open_ws,
        state=state,
    )
    with open(path, "rb") as f:
        first = style_fingerprint(_span(f, index, 0))
    return fmt, detected, index, first


def _span(f: BinaryIO, index: ArrayIndex, k: int) -> bytes:
    start = int(index.starts[k])
    f.seek(start)
    return f.read(int(index.ends[k]) - start)


def iter_records(path: Path, has_bom: bool) -> Iterator[Record]:
    """Yield every record of a (validated) JSON array file in order, streaming."""
    for i, (_, _, line, value, _) in enumerate(_elements(path, len(BOM) if has_bom else 0)):
        yield Record(i, line, value)


def read_records(path: Path, index: ArrayIndex, wanted: Sequence[int]) -> dict[int, Record]:
    """Read the records at the given 0-based indices from their byte spans."""
    check_unchanged(path, index.state)
    out = {}
    with open(path, "rb") as f:
        for i in sorted(set(wanted)):
            line = int(index.lines[i])
            out[i] = Record(i, line, parse_record_bytes(_span(f, index, i), path, line))
    return out


def write(
    path: Path,
    index: ArrayIndex,
    output: Path,
    replacements: Mapping[int, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write ``path`` to ``output`` with element p replaced by ``replacements[p]``, in the span
    of the old element (from its first to its last character): the separator text around it and
    every other element stay byte for byte."""
    check_unchanged(path, index.state)
    with open(path, "rb") as src, atomic_output(output) as dst:
        src_fd, dst_fd = src.fileno(), dst.fileno()
        styles = ReplacementStyles(
            lambda k: _span(src, index, k),
            len(index.starts),
            lambda: read_blocks(path, int(index.starts[0])),
        )
        cursor = 0
        for p in sorted(replacements):
            start = int(index.starts[p])
            copy_range(src_fd, dst_fd, cursor, start - cursor, progress)
            text = styles.render(replacements[p], styles.neighbours(p))
            write_all(dst_fd, text.encode("utf-8"))
            cursor = int(index.ends[p])
        copy_range(src_fd, dst_fd, cursor, index.state[0] - cursor, progress)
