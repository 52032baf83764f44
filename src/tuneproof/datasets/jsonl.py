"""JSON Lines: reading records back by index and the write pass, which copies the input's bytes
untouched (in the kernel, without parsing them again) except the JSON value of each replaced
record, written in its place in the style of the record it replaces and its neighbours, while a
thread hashes the same pieces for the key (:mod:`tuneproof.datasets.digests`).

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
from tuneproof.datasets.render import ReplacementStyles
from tuneproof.datasets.textfile import (
    BOM,
    check_unchanged,
    copy_range,
    parse_record_bytes,
    read_blocks,
    write_all,
)

_BLANKS = b" \t\r\n"  # around a record on its line; a JSON value never starts or ends with one


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
    replacements: Mapping[int, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write ``path`` to ``output`` with record p replaced by ``replacements[p]``: every other
    byte is copied as it is (the replaced line keeps its blanks and line ending), each new record
    is written in the style of the one it replaces and its neighbours. The output's SHA-256 is
    hashed from the same pieces meanwhile, and remembered."""
    check_unchanged(path, index.state)
    with open(path, "rb") as src:
        pieces = _pieces(src, path, index, replacements)
        with BackgroundDigest(path, pieces) as digest:
            with atomic_output(output) as dst:
                for piece in pieces:
                    if isinstance(piece, bytes):
                        write_all(dst.fileno(), piece)
                    else:
                        copy_range(src.fileno(), dst.fileno(), *piece, progress)
                if progress is not None:  # the last range is empty after a replaced last line
                    progress(index.state[0])
                written = os.fstat(dst.fileno())
            hexdigest = digest.result(index.state)  # once the copy is done: same input bytes
    if hexdigest is not None:
        remember_written(output, written, hexdigest)


def _pieces(
    src: Any, path: Path, index: JsonlIndex, replacements: Mapping[int, dict[str, Any]]
) -> list[Piece]:
    """The output, in order: ranges (offset, count) of the input and the new records' bytes,
    each in place of the JSON value of the line it replaces."""
    styles = ReplacementStyles(
        lambda k: _raw_line(src, int(index.starts[k])),
        len(index.starts),
        lambda: read_blocks(path, int(index.starts[0])),
    )
    pieces: list[Piece] = []
    cursor = 0
    for p in sorted(replacements):
        line_start = int(index.starts[p])
        raw = _raw_line(src, line_start)
        value_start = line_start + len(raw) - len(raw.lstrip(_BLANKS))
        value_end = line_start + len(raw.rstrip(_BLANKS))
        text = styles.render(replacements[p], styles.neighbours(p))
        pieces += [(cursor, value_start - cursor), text.encode("utf-8")]
        cursor = value_end
    pieces.append((cursor, index.state[0] - cursor))
    return pieces
