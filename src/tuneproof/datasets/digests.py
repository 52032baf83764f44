"""SHA-256 digests of dataset files, hashed beside the pass that validates or writes them, and
remembered against the file's identity so that the key does not read the files once more.

A :class:`BackgroundDigest` hashes, in a thread, a sequence of pieces: byte ranges of one file
(read by the thread itself) and literal bytes. The validating pass hashes its input as one range;
the writing pass hashes the very pieces it writes (the input's ranges around the replaced records
and the new records' bytes) while the kernel copies them, so the bytes never pass through Python
twice.
hashlib releases the GIL while it hashes, so the thread runs on another core.

A digest is remembered under the file's (device, inode, size, mtime, ctime): any later change
of the file (a write, a rename over it, a ``touch``) changes that identity and the digest is
forgotten, so :func:`known_sha256` answers only for the very bytes that were hashed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

HASH_CHUNK = 32 << 20
"""Bytes read per step: large, so that the thread needs the GIL rarely while another parses."""
REMEMBERED = 16

Identity = tuple[int, int, int, int, int]
Piece = tuple[int, int] | bytes
"""A part of a hashed stream: (offset, count) bytes of the file, or these bytes."""

_known: OrderedDict[Identity, str] = OrderedDict()
_lock = threading.Lock()


def identity(st: os.stat_result) -> Identity:
    """What must stay the same for a remembered digest to hold: device, inode, size, mtime and
    ctime (which only the kernel sets, so a restored mtime does not fool it)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def remember(ident: Identity, hexdigest: str) -> None:
    """Record that the file of identity ``ident`` has SHA-256 ``hexdigest``."""
    with _lock:
        _known[ident] = hexdigest
        _known.move_to_end(ident)
        while len(_known) > REMEMBERED:
            _known.popitem(last=False)


def remember_written(path: Path, written: os.stat_result, hexdigest: str) -> None:
    """Remember ``hexdigest`` for the file now at ``path`` if it is the one that was written
    (``written``: its fstat once its last byte was written) and unchanged since (its rename into
    place changed only its ctime)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if identity(st)[:4] == identity(written)[:4]:
        remember(identity(st), hexdigest)


def known_sha256(path: str | Path) -> str | None:
    """The SHA-256 (hex) of ``path`` if a pass of this process hashed these very bytes, else
    None (never hashed, or changed since)."""
    try:
        ident = identity(os.stat(path))
    except OSError:
        return None
    with _lock:
        return _known.get(ident)


class BackgroundDigest:
    """SHA-256 of ``pieces`` (ranges of the file at ``path`` and literal bytes, in order), hashed
    by a thread that starts when the ``with`` block is entered; leaving the block stops it.
    :meth:`result` waits for the digest; it is None if the file changed while it was read (or
    could not be read), so that no digest is ever given for bytes that were not hashed."""

    def __init__(self, path: Path, pieces: Sequence[Piece]) -> None:
        self._path = path
        self._pieces = pieces
        self._stop = threading.Event()
        self._digest: str | None = None
        self.source: Identity | None = None
        """The file's identity while it was hashed (set once the digest is ready)."""
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)

    def __enter__(self) -> BackgroundDigest:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        digest = hashlib.sha256()
        view = memoryview(bytearray(HASH_CHUNK))
        try:
            with open(self._path, "rb", buffering=0) as f:
                before = identity(os.fstat(f.fileno()))
                for piece in self._pieces:
                    if isinstance(piece, bytes):
                        digest.update(piece)
                        continue
                    offset, end = piece[0], piece[0] + piece[1]
                    f.seek(offset)
                    while offset < end and not self._stop.is_set():
                        got = f.readinto(view[: min(HASH_CHUNK, end - offset)])
                        if not got:
                            return  # the file is shorter than it was
                        digest.update(view[:got])
                        offset += got
                unchanged = identity(os.fstat(f.fileno())) == before
        except OSError:
            return  # the key's facts hash the file themselves, and say why if that fails
        if unchanged and not self._stop.is_set():
            self.source, self._digest = before, digest.hexdigest()

    def result(self, state: tuple[int, int]) -> str | None:
        """Wait for the digest of the pieces. None unless the file was hashed in ``state`` (size,
        mtime_ns: the state in which the pass beside found it) and is still unchanged, so that the
        pass and the thread read the same bytes; None also when it could not be read."""
        self._thread.join()
        if self._digest is None or self.source is None or self.source[2:4] != state:
            return None
        try:
            unchanged = identity(os.stat(self._path)) == self.source
        except OSError:
            return None
        return self._digest if unchanged else None

    def remember_source(self, state: tuple[int, int]) -> None:
        """Wait, and remember the digest as the file's own (the pieces being the whole file),
        if :meth:`result` gives it."""
        digest = self.result(state)
        if digest is not None and self.source is not None:
            remember(self.source, digest)
