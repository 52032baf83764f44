"""File plumbing shared by the JSONL and JSON-array containers: parse one record's bytes with a
precise error, copy byte ranges in the kernel, refuse a changed input or an output that is the
input."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from tuneproof.errors import DatasetError

BOM = b"\xef\xbb\xbf"
COPY_CHUNK = 64 << 20
NOTHING_WRITTEN = "nothing was written"
REENCODE_HINT = f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8); {NOTHING_WRITTEN}"

COMPRESSIONS: tuple[tuple[bytes, str, str], ...] = (
    (b"\x1f\x8b", "gzip", ".gz"),
    (b"\x28\xb5\x2f\xfd", "zstd", ".zst"),
    (b"BZh", "bzip2", ".bz2"),
    (b"\xfd7zXZ\x00", "xz", ".xz"),
    (b"PK\x03\x04", "zip", ".zip"),
    (b"PK\x05\x06", "zip", ".zip"),
)
"""(magic bytes, compressor, its suffix): compressed files are not read directly (records are
located and copied by byte offset), and none of these can start JSON text."""


def check_not_compressed(path: Path, head: bytes) -> None:
    """Raise DatasetError when ``head`` (the file's first bytes) is a compressed file's, saying
    how to decompress it."""
    for magic, tool, suffix in COMPRESSIONS:
        if head.startswith(magic):
            if tool == "zip":
                command = f"unzip {shlex.quote(str(path))}"
            else:
                out = (
                    path.with_suffix("")
                    if path.suffix.lower() == suffix
                    else path.with_name(f"{path.stem}.decompressed{path.suffix}")
                )
                command = f"{tool} -dc {shlex.quote(str(path))} > {shlex.quote(str(out))}"
            raise DatasetError(
                path,
                f"compressed with {tool} (tuneproof reads uncompressed JSONL, JSON and parquet"
                " files only)",
                hint=f"decompress it first ({command}) and give the decompressed file;"
                f" {NOTHING_WRITTEN}",
            )


def parse_record_bytes(raw: bytes, path: Path, line: int) -> Any:
    """Parse one JSON value from ``raw`` (orjson, falling back to the json module for what
    orjson refuses but JSON tools commonly accept, e.g. NaN or lone surrogate escapes).

    Raises DatasetError naming ``path:line`` and the column for invalid JSON or non-UTF-8 bytes.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(raw[: e.start].decode("utf-8", "replace")) + 1
        raise DatasetError(
            path,
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column})",
            line=line,
            hint=REENCODE_HINT,
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            path,
            f"invalid JSON ({e.msg} at column {e.colno})",
            line=line + e.lineno - 1,
            hint=f"fix the line or drop it; {NOTHING_WRITTEN}",
        ) from None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (parsed records hold no cycles; collections while
    millions of them stream by only cost time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def file_state(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of ``path``: what must not change between inspecting and writing."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def check_unchanged(path: Path, state: tuple[int, int]) -> None:
    """Raise DatasetError when ``path`` changed since it was inspected."""
    if file_state(path) != state:
        raise DatasetError(
            path, "the file changed since it was inspected", hint="run the command again"
        )


def check_output_path(source: Path, output: Path) -> None:
    """Refuse an output that is the input (also through a symlink, a relative path or a hard
    link), that lies inside an input folder, or whose folder does not exist."""
    src, dst = source.resolve(), output.resolve()
    same = src == dst
    if not same and output.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(source, output)
    if same:
        raise DatasetError(
            output,
            "the output is the input",
            hint=f"write the planted dataset to another path; {NOTHING_WRITTEN}",
        )
    if source.is_dir() and (src in dst.parents or dst in src.parents):
        raise DatasetError(
            output, "the output folder overlaps the input folder", hint="choose a path outside it"
        )
    if not dst.parent.is_dir():
        raise DatasetError(
            output, f"the folder {dst.parent} does not exist", hint="create it first"
        )


def read_blocks(path: Path, start: int = 0, size: int = 4 << 20) -> Iterator[bytes]:
    """Yield the bytes of ``path`` from ``start`` in blocks of ``size``."""
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(size):
            yield block


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_at(fd: int, count: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, count)


def copy_range(
    src_fd: int,
    dst_fd: int,
    offset: int,
    count: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Append ``count`` bytes of ``src_fd`` starting at ``offset`` to ``dst_fd`` (at its current
    position): in the kernel where it can (Linux copy_file_range, then sendfile), else by reading
    and writing. ``progress(offset_reached)`` is called after every chunk."""
    kernel = sys.platform.startswith("linux")
    end = offset + count
    while offset < end:
        n = min(COPY_CHUNK, end - offset)
        done = 0
        if kernel:
            try:
                done = os.copy_file_range(src_fd, dst_fd, n, offset)
            except OSError:
                try:
                    done = os.sendfile(dst_fd, src_fd, offset, n)
                except OSError:
                    kernel = False  # this pair of files cannot be copied in the kernel
        if done <= 0:
            data = _read_at(src_fd, n, offset)
            if not data:
                raise OSError(f"the input ended {end - offset} bytes early")
            write_all(dst_fd, data)
            done = len(data)
        offset += done
        if progress is not None:
            progress(offset)
