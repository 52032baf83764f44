"""JSON Lines: reading records back by index and the write pass, which copies the input's bytes
between insertion points untouched (in the kernel, without parsing them again) and writes each
inserted record on its own line in the style of its neighbours, while a thread hashes the same
pieces for the key (:mod:`tuneproof.datasets.digests`).

The validation pass that builds the index is in :mod:`tuneproof.datasets.jsonl_scan`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneproof.atomic import atomic_output
from tuneproof.datasets.digests import BackgroundDigest, Piece, remember_written
from tuneproof.datasets.jsonl_scan import JsonlIndex
from tuneproof.datasets.line_blocks import line_blocks
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
    for block in line_blocks(path):
        for raw in block.lines():
            if line == 1:
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
    bytes are copied as they are, inserted records are written in their neighbours' style. The
    output's SHA-256 is hashed from the same pieces meanwhile, and remembered."""
    check_unchanged(path, index.state)
    with open(path, "rb") as src:
        pieces = _pieces(src, path, index, insertions)
        with BackgroundDigest(path, pieces) as digest:
            with atomic_output(output) as dst:
                for piece in pieces:
                    if isinstance(piece, bytes):
                        write_all(dst.fileno(), piece)
                    else:
                        copy_range(src.fileno(), dst.fileno(), *piece, progress)
                written = os.fstat(dst.fileno())
            hexdigest = digest.result(index.state)  # once the copy is done: same input bytes
    if hexdigest is not None:
        remember_written(output, written, hexdigest)


def _pieces(
    src: Any, path: Path, index: JsonlIndex, insertions: Mapping[int, Sequence[dict[str, Any]]]
) -> list[Piece]:
    """The output, in order: ranges (offset, count) of the input and the inserted bytes."""
    n = len(index.starts)
    styles = InsertionStyles(
        lambda k: _raw_line(src, int(index.starts[k])),
        n,
        lambda: read_blocks(path, int(index.starts[0])),
    )
    pieces: list[Piece] = []
    cursor = 0
    for p in sorted(insertions):
        if not insertions[p]:
            continue
        at = int(index.starts[p]) if p < n else index.records_end
        pieces += [
            (cursor, at - cursor),
            _insertion(insertions[p], styles.neighbours(p), index, p == n, styles),
        ]
        cursor = at
    pieces.append((cursor, index.state[0] - cursor))
    return pieces


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
