"""JSON Lines: reading records back by index and the write pass, which copies the input's bytes
between insertion points untouched (in the kernel, without parsing them again) and writes each
inserted record on its own line in the style of its neighbours.

The validation pass that builds the index is in :mod:`tuneproof.datasets.jsonl_scan`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneproof.atomic import atomic_output
from tuneproof.datasets.jsonl_scan import JsonlIndex, line_blocks
from tuneproof.datasets.records import Record
from tuneproof.datasets.render import InsertionStyles
from tuneproof.datasets.style import StyleFingerprint
from tuneproof.datasets.textfile import (
    BOM,
    check_unchanged,
    copy_range,
    parse_record_bytes,
    read_blocks,
    write_all,
)


def iter_records(path: Path) -> Iterator[Record]:
    """Yield every record of a (validated) JSONL file in order, streaming."""
    index, line = 0, 1
    for offset, lines, _ in line_blocks(path):
        for raw in lines:
            if offset == 0 and line == 1:
                raw = raw.removeprefix(BOM)
            if raw.strip():
                yield Record(index, line, parse_record_bytes(raw, path, line))
                index += 1
            line += 1


def _raw_line(f: Any, offset: int) -> bytes:
    f.seek(offset)
    raw: bytes = f.readline()
    return raw


def read_records(path: Path, index: JsonlIndex, wanted: Sequence[int]) -> dict[int, Record]:
    """Read the records at the given 0-based indices by seeking to their offsets."""
    check_unchanged(path, index.state)
    out = {}
    with open(path, "rb") as f:
        for i in sorted(set(wanted)):
            line = int(index.lines[i])
            out[i] = Record(
                i, line, parse_record_bytes(_raw_line(f, int(index.starts[i])), path, line)
            )
    return out


def write(
    path: Path,
    index: JsonlIndex,
    output: Path,
    insertions: Mapping[int, Sequence[dict[str, Any]]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write ``path`` to ``output`` with ``insertions[p]`` inserted before record p: untouched
    bytes are copied as they are, inserted records are written in their neighbours' style."""
    check_unchanged(path, index.state)
    n = len(index.starts)
    with open(path, "rb") as src, atomic_output(output) as dst:
        src_fd, dst_fd = src.fileno(), dst.fileno()
        styles = InsertionStyles(
            lambda k: _raw_line(src, int(index.starts[k])),
            n,
            lambda: read_blocks(path, int(index.starts[0])),
        )
        cursor = 0
        for p in sorted(insertions):
            if not insertions[p]:
                continue
            at = int(index.starts[p]) if p < n else index.records_end
            copy_range(src_fd, dst_fd, cursor, at - cursor, progress)
            cursor = at
            write_all(
                dst_fd, _insertion(insertions[p], styles.neighbours(p), index, p == n, styles)
            )
        copy_range(src_fd, dst_fd, cursor, index.state[0] - cursor, progress)


def _insertion(
    records: Sequence[dict[str, Any]],
    neighbours: list[StyleFingerprint],
    index: JsonlIndex,
    at_end: bool,
    styles: InsertionStyles,
) -> bytes:
    """The bytes of the inserted records, each on its own line like its neighbours'."""
    first = neighbours[0]
    eol = next((fp.line_ending for fp in neighbours if fp.line_ending), index.eol)
    out = []
    for record in records:
        text = first.leading + styles.render(record, neighbours) + first.trailing
        # After a last line without newline, the line ending goes first: the file still ends
        # without one, and the original bytes stay a prefix.
        out.append(eol + text if at_end and not index.final_newline else text + eol)
    return "".join(out).encode("utf-8")
