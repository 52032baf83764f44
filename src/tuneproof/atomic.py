"""Atomic output: write to a temporary file beside the target, then rename over it.

A crash or an error never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_output(
    path: str | Path, *, mode: int = 0o644, binary: bool = True
) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; on success, fsync and rename it to ``path``.

    The file gets permission bits ``mode`` *before* any byte is written (so a secret never sits
    in a world-readable file). On any exception the temporary file is removed and ``path`` is
    left exactly as it was.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``path``; on success rename it to ``path``.

    ``path`` must not exist yet (a directory cannot be replaced atomically). On any exception the
    temporary directory is removed.
    """
    target = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or "."))
    try:
        yield tmp
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
