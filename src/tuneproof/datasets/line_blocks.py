"""Whole lines of a file in blocks of a few MB, read into one reused buffer: the reader under
the JSONL validation pass (:mod:`tuneproof.datasets.jsonl_scan`) and the planted file's writer
(:mod:`tuneproof.datasets.jsonl`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BLOCK = 4 << 20
"""Bytes read per block (a line longer than that makes the buffer grow)."""
Int64s = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class LineBlock:
    """A run of whole lines of a file: ``data`` holds the bytes from byte ``offset`` on (a view of
    the reader's buffer, valid until the next block is read), ``ends[i]`` is where line i ends in
    it (its "\\n", or the end of ``data`` for a last line without one, when not ``complete``)."""

    offset: int
    data: memoryview
    ends: Int64s
    complete: bool

    def lines(self) -> list[bytes]:
        """The lines, each as bytes without its "\\n"."""
        lines = bytes(self.data).split(b"\n")
        if self.complete:
            lines.pop()
        return lines

    def views(self) -> Iterator[memoryview]:
        """The lines as views of ``data``, without their "\\n" (no copy)."""
        ends = self.ends.tolist()
        return map(self.data.__getitem__, map(slice, [0, *[e + 1 for e in ends[:-1]]], ends))


def line_blocks(path: Path, start: int = 0, end: int | None = None) -> Iterator[LineBlock]:
    """Yield consecutive runs of whole lines of ``path[start:end]``, about BLOCK bytes each, read
    into one reused buffer; only the file's last line can lack its newline. A line longer than
    the buffer makes it grow."""
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        left = (os.fstat(f.fileno()).st_size if end is None else end) - start
        buf = bytearray(BLOCK)
        view, offset, kept = memoryview(buf), start, 0  # kept: a line's start, read already
        while left > 0:
            if kept == len(buf):  # no newline in a full buffer: a longer line
                buf = buf + bytes(len(buf))
                view = memoryview(buf)
            got = f.readinto(view[kept : kept + min(len(buf) - kept, left)])
            if not got:
                break  # the file is shorter than it was
            left -= got
            found = np.flatnonzero(np.frombuffer(buf, np.uint8, got, kept) == 10)
            if not len(found):
                kept += got
                continue
            ends = found + kept
            cut = int(ends[-1]) + 1
            yield LineBlock(offset, view[:cut], ends, True)
            offset += cut
            kept += got - cut
            buf[:kept] = bytes(view[cut : cut + kept])  # the start of the next line
        if kept:
            yield LineBlock(offset, view[:kept], np.array([kept], np.int64), False)
