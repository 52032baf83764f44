"""The dequantised-model cache: a GGUF file dequantised once, kept as a safetensors model folder.

Loading a GGUF file with transformers dequantises every tensor and converts its tokenizer, about
20 s for the embedded model; loading the same model from a saved folder takes well under a second.
:func:`load_gguf_cached` keeps one entry per GGUF content and library versions in the cache folder
(:func:`cache_root`):

- ``$TUNEPROOF_CACHE_DIR`` when set (``TUNEPROOF_CACHE_DIR=off`` disables the cache), else
  ``$XDG_CACHE_HOME/tuneproof/models``, else ``~/.cache/tuneproof/models``;
- an entry is the folder ``<GGUF SHA-256>-transformers<version>-gguf<version>`` (dequantisation
  may change between versions) holding what ``save_pretrained`` writes for the model (float32
  safetensors) and tokenizer, plus a manifest of every file's SHA-256, written last;
- an entry is written in a temporary sibling folder and renamed into place (atomic: a reader sees
  a whole entry or none; when another process wins the race, ours is discarded);
- an entry whose manifest, files or load fail is removed and rebuilt from the GGUF;
- a cache that cannot be written (read-only, disk full) only costs a warning: the model loaded
  from the GGUF is returned all the same.

The model identity (the GGUF's path and SHA-256) is the caller's business and never changes with
the cache. torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "TUNEPROOF_CACHE_DIR"
CACHE_OFF = "off"
MANIFEST = "tuneproof-cache.json"
FORMAT = 1
LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys")
STALE_TMP_SECONDS = 6 * 3600  # a temporary folder this old was left by a killed process

Loader = Callable[[], tuple[Any, Any]]


class ModelCacheWarning(UserWarning):
    """The model cache could not be used; the model was loaded from its GGUF file instead."""


def cache_root() -> Path | None:
    """The cache folder (see the module docstring), or None when ``TUNEPROOF_CACHE_DIR=off``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured.lower() == CACHE_OFF:
        return None
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tuneproof" / "models"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def entry_key(gguf_sha256: str) -> str:
    """The entry name of a GGUF file's dequantised model under the installed library versions."""
    return f"{gguf_sha256}-transformers{_version('transformers')}-gguf{_version('gguf')}"


def _warn(message: str) -> None:
    warnings.warn(message, ModelCacheWarning, stacklevel=2)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _manifest_problem(entry: Path, key: str) -> str | None:
    """Why ``entry`` is not a whole, intact cache entry for ``key`` (None when it is)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"its {MANIFEST} is missing or unreadable"
    if not isinstance(manifest, dict):
        manifest = {}
    files = manifest.get("files")
    if (
        manifest.get("format") != FORMAT
        or manifest.get("key") != key
        or not isinstance(files, dict)
    ):
        return f"its {MANIFEST} does not describe this entry"
    for name, digest in files.items():
        path = entry / name
        try:
            if path.stat().st_size != digest.get("size") or _file_sha256(path) != digest.get(
                "sha256"
            ):
                return f"{name} does not match its recorded SHA-256"
        except (OSError, AttributeError):
            return f"{name} is missing"
    return None


def _read_entry(entry: Path) -> tuple[Any, Any]:
    """Model and tokenizer saved in ``entry``; raises when a weight is missing or unexpected."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(entry))
    loaded: Any = AutoModelForCausalLM.from_pretrained(
        str(entry), dtype=torch.float32, output_loading_info=True
    )
    model, info = loaded
    bad = {k: v for k, v in info.items() if k in LOADING_PROBLEMS and v}
    if bad:
        raise ValueError(f"the saved weights do not fit the model: {bad}")
    return model, tokenizer


def _plain_copy(model: Any) -> Any:
    """``model`` as a plain float32 model that ``save_pretrained`` accepts (a GGUF-loaded model
    is marked quantised and refuses), sharing its tensors (no copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False, assign=True)
    tied = set(getattr(plain, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"cannot rebuild the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    plain.tie_weights()
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def _discard(folder: Path) -> None:
    """Remove ``folder`` (renamed aside first, so that no reader sees it half deleted)."""
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.discard.tmp")
    with contextlib.suppress(OSError):
        os.rename(folder, aside)
        folder = aside
    shutil.rmtree(folder, ignore_errors=True)


def _sweep_stale(root: Path) -> None:
    """Remove temporary folders that killed processes left in ``root``."""
    now = time.time()
    for tmp in root.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.is_dir() and now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)


def store_entry(entry: Path, model: Any, tokenizer: Any) -> bool:
    """Write ``model`` and ``tokenizer`` as the cache entry ``entry``; True when it is in place
    (ours, or a whole one another process wrote first). Any failure (read-only folder, full
    disk) warns, leaves nothing behind and returns False."""
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(entry.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=entry.parent))
        _plain_copy(model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {
            str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _file_sha256(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {"format": FORMAT, "key": entry.name, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / MANIFEST).is_file():
                raise
            # another process won the race: keep its entry, discard ours
        return True
    except (OSError, ValueError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())
        _warn(
            f"cannot write the model cache {entry.parent} ({detail}); loaded from the GGUF "
            f"file instead (set {CACHE_ENV}=off to stop trying)"
        )
        return False
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_gguf_cached(gguf: Path, gguf_sha256: str, load: Loader) -> tuple[Any, Any]:
    """(model, tokenizer) of the GGUF file ``gguf`` (SHA-256 ``gguf_sha256``): from its cache
    entry when there is a whole one, else ``load()`` (which reads the GGUF) and a new entry.

    Errors of ``load()`` propagate; the cache's own problems only warn.
    """
    root = cache_root()
    if root is None:
        return load()
    entry = root / entry_key(gguf_sha256)
    if entry.exists():
        problem = _manifest_problem(entry, entry.name)
        if problem is None:
            try:
                return _read_entry(entry)
            except Exception as exc:  # any failure to read an entry: rebuild it
                problem = " ".join(str(exc).split()) or type(exc).__name__
        _warn(f"the cached model {entry} is damaged ({problem}); rebuilding it from {gguf.name}")
        _discard(entry)
    model, tokenizer = load()
    store_entry(entry, model, tokenizer)
    return model, tokenizer
