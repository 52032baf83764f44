"""Files tuneproof reads and writes whole: JSON documents (keys, reports), read and validated with
errors that name the file, the field and what to do next, and written atomically as indented
JSON; and the SHA-256 digest of any file (the key records its dataset's)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from tuneproof.atomic import atomic_output
from tuneproof.errors import TuneproofError, describe_validation_error

M = TypeVar("M", bound=BaseModel)


def read_document(
    path: str | Path,
    model: type[M],
    error: type[TuneproofError],
    *,
    what: str,
    version_field: str,
    version: int,
    missing_hint: str,
    version_hint: str,
    version_required: bool = True,
) -> M:
    """Read ``path`` as a ``model`` document (a tuneproof ``what``: "key", "report"); raises
    ``error`` with one line naming the file and the first bad field. ``version_field`` must
    equal ``version`` (or be absent, when not ``version_required``)."""
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} file {source} not found - {missing_hint}") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {source}: {exc.strerror}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON ({exc}) - is this a tuneproof {what}?") from None
    if not isinstance(data, dict):
        raise error(f"{source}: not a tuneproof {what} (expected a JSON object)")
    found = data.get(version_field)
    if found != version and (version_required or found is not None):
        raise error(
            f"{source}: {what} version {found!r} is not supported (this tuneproof reads"
            f" version {version}) - {version_hint}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{source}: {describe_validation_error(exc)}") from None


def check_writable(path: str | Path, error: type[TuneproofError], *, what: str) -> None:
    """Refuse, before any expensive work, a ``what`` file ("key", "report") that cannot be
    written at ``path``: a folder there, a missing folder, or a folder without write access."""
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise error(f"{target} is a folder - give a file name for the {what}")
    if not parent.is_dir():
        raise error(f"{parent} is not a directory - create it first")
    if not os.access(parent, os.W_OK):
        raise error(f"cannot write the {what} in {parent}: permission denied")


def document_bytes(document: BaseModel) -> bytes:
    """``document`` as indented JSON ending with a newline (keys in field order)."""
    data = document.model_dump(mode="json")
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def write_document(document: BaseModel, path: str | Path, *, mode: int = 0o644) -> None:
    """Write :func:`document_bytes` to ``path`` atomically with ``mode``."""
    with atomic_output(path, mode=mode) as handle:
        handle.write(document_bytes(document))


def path_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file, or of a folder's files (sorted relative names and contents):
    what a key records of its dataset, and a model's identity of its weights file."""
    root = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        if root.is_dir():
            digest.update(str(file.relative_to(root)).encode() + b"\0")
        with file.open("rb") as handle:
            hashlib.file_digest(handle, lambda: digest)  # feeds the one running digest
    return digest.hexdigest()
