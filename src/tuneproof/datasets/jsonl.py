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
from tuneproof.datasets.jsonl_scan import BLOCK, JsonlIndex, line_blocks
from tuneproof.datasets.records import Record
from tuneproof.datasets.render import render, resolve_style
from tuneproof.datasets.style import StyleFingerprint, file_evidence, style_fingerprint
from tuneproof.datasets.textfile import (
    BOM,
    check_unchanged,
    copy_range,
    parse_record_bytes,
    write_all,
)


def iter_records(path: Path) -> Iterator[Record]:
    """Yield every record of a (validated) JSONL file in order, streaming."""
    index, line = 0, 1
    for offset, body in line_blocks(path):
        lines = body.split(b"\n")
        if body.endswith(b"\n"):
            lines.pop()
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
    size = index.state[0]
    evidence_cache: dict[str, bool] = {}
    with open(path, "rb") as src, atomic_output(output) as dst:
        src_fd, dst_fd = src.fileno(), dst.fileno()

        def fingerprint(k: int) -> StyleFingerprint | None:
            return style_fingerprint(_raw_line(src, int(index.starts[k]))) if 0 <= k < n else None

        asked: set[str] = set()

        def evidence(fields: set[str]) -> dict[str, bool]:
            if fields - asked:
                evidence_cache.update(file_evidence(_blocks_after_bom(path, index), fields - asked))
                asked.update(fields)
            return {f: evidence_cache[f] for f in fields if f in evidence_cache}

        cursor = 0
        for p in sorted(insertions):
            records = insertions[p]
            if not records:
                continue
            at = int(index.starts[p]) if p < n else index.records_end
            copy_range(src_fd, dst_fd, cursor, at - cursor, progress)
            cursor = at
            neighbours = [fp for fp in (fingerprint(p - 1), fingerprint(p)) if fp is not None]
            write_all(
                dst_fd, _insertion(records, neighbours, index, at_eof=p == n, evidence=evidence)
            )
        copy_range(src_fd, dst_fd, cursor, size - cursor, progress)


def _blocks_after_bom(path: Path, index: JsonlIndex) -> Iterator[bytes]:
    start = int(index.starts[0]) if int(index.starts[0]) <= len(BOM) else 0
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(BLOCK):
            yield block


def _insertion(
    records: Sequence[dict[str, Any]],
    neighbours: list[StyleFingerprint],
    index: JsonlIndex,
    at_eof: bool,
    evidence: Callable[[set[str]], dict[str, bool]],
) -> bytes:
    """The bytes of the inserted records, each on its own line like its neighbours'."""
    first = neighbours[0]
    eol = next((fp.line_ending for fp in neighbours if fp.line_ending), index.eol)
    out = []
    for record in records:
        style = resolve_style(neighbours, record, evidence)
        text = first.leading + render(record, style) + first.trailing
        # After a last line without newline, the line ending goes first: the file still ends
        # without one, and the original bytes stay a prefix.
        out.append(eol + text if at_eof and not index.final_newline else text + eol)
    return "".join(out).encode("utf-8")
