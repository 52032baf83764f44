"""Loading local models for the transformers backend, with their identity.

:func:`load_weights` finds and loads ``spec``: ``'embedded'`` (the GGUF shipped with tuneproof),
an HF model folder, a PEFT adapter folder (merged into its base for speed) or a ``.gguf`` file,
in float32 on CPU, never downloading anything. A GGUF file's identity records its SHA-256; it is
dequantised once and then read from :mod:`tuneproof.backends.model_cache`.
:func:`recorded_base` reads the base model a PEFT adapter's config names. The model class that
wraps what is loaded is :class:`tuneproof.backends.hf.HFCausalLM`; torch, transformers and peft
are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tuneproof.backends.model_cache import load_gguf_cached
from tuneproof.documents import path_sha256
from tuneproof.embedded import EMBEDDED_MODEL_ID, EMBEDDED_NAME, embedded_gguf_path
from tuneproof.errors import GeneratorError
from tuneproof.types import ModelIdentity


class LoadedWeights(NamedTuple):
    """A loaded causal LM (eval mode), its tokenizer, and what it is."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
MODEL_FOLDER_NEEDS = (
    "a model folder needs config.json (naming its model_type), the weights (*.safetensors or"
    " pytorch_model.bin) and the tokenizer files (tokenizer.json, tokenizer.model or vocab.json"
    " + merges.txt), as save_pretrained writes them"
)


def _read_json(path: Path) -> Any:
    """The JSON document at ``path``, or None when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def folder_lacks(folder: Path) -> list[str]:
    """What the HF model folder ``folder`` lacks to be loaded (empty when it looks complete)."""
    lacks: list[str] = []
    config = _read_json(folder / "config.json")
    if not (folder / "config.json").is_file():
        lacks.append("config.json")
    elif not isinstance(config, dict):
        lacks.append("a config.json that is valid JSON")
    elif not isinstance(config.get("model_type"), str):
        lacks.append("a model_type in config.json")
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        lacks.append("weights")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        lacks.append("tokenizer files")
    return lacks


def check_model_folder(spec: str, folder: Path) -> None:
    """Raise :class:`GeneratorError` naming what ``folder`` lacks to be a model folder (one
    line, before transformers' own messages, which point elsewhere: sentencepiece, tiktoken)."""
    lacks = folder_lacks(folder)
    if not lacks:
        return
    ggufs = sorted(folder.glob("*.gguf"))
    hint = f"; or give the .gguf file itself ({ggufs[0]})" if ggufs else ""
    what = lacks[0] if len(lacks) == 1 else f"{', '.join(lacks[:-1])} and {lacks[-1]}"
    raise GeneratorError(
        f"cannot load model '{spec}': the folder {folder} lacks {what} - {MODEL_FOLDER_NEEDS}{hint}"
    )


def adapter_base(folder: Path, base_model: str | None) -> str:
    """The base model spec of a PEFT adapter folder: ``base_model`` or the one its config names,
    which must be available locally ('embedded', a folder or a .gguf file)."""
    config = _read_json(folder / "adapter_config.json")
    if not isinstance(config, dict):
        raise GeneratorError(
            f"cannot load adapter '{folder}': its adapter_config.json is not a JSON object - "
            "an adapter folder needs the adapter_config.json and adapter weights PEFT writes"
        )
    recorded = str(config.get("base_model_name_or_path") or "")
    base = base_model or recorded
    if base in (EMBEDDED_NAME, EMBEDDED_MODEL_ID):
        return EMBEDDED_NAME
    if not base or not Path(base).expanduser().exists():
        raise GeneratorError(
            f"the adapter {folder} was trained on '{recorded or '?'}', which is not available "
            "locally - pass --base-model with the base model's folder, .gguf file or 'embedded'"
        )
    return base


def recorded_base(spec: str) -> str | None:
    """The base model recorded in a PEFT adapter folder's config when it is available locally
    (so that H0-base runs without naming it); None otherwise. Never guessed."""
    folder = Path(spec).expanduser()
    if not (folder / "adapter_config.json").is_file():
        return None
    try:
        return adapter_base(folder, None)
    except GeneratorError:
        return None


def load_weights(spec: str, base_model: str | None = None) -> LoadedWeights:
    """Load ``spec``: ``embedded``, an HF model folder, a PEFT adapter folder (its base from
    ``base_model`` or its config, merged for speed), or a ``.gguf`` file; float32 on CPU.

    Raises :class:`GeneratorError` with what to do when the model cannot be found or loaded.
    """
    path = Path(spec).expanduser()
    if spec != EMBEDDED_NAME and path.is_dir() and (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = load_weights(adapter_base(path, base_model))
        try:
            with warnings.catch_warnings():  # peft reads a property transformers 5 deprecates
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                )
                merged = PeftModel.from_pretrained(base.model, str(path)).merge_and_unload()
        except (OSError, ValueError) as exc:
            detail = " ".join(str(exc).split())
            raise GeneratorError(f"cannot load adapter '{spec}': {detail}") from exc
        merged.eval()
        tokenizer = base.tokenizer
        if (path / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path))
        identity = ModelIdentity(
            name=f"{path.name} (adapter on {base.identity.name})",
            backend="transformers",
            source=str(path),
            sha256=None,
        )
        return LoadedWeights(merged, tokenizer, identity)
    return _load_plain(spec)


def _load_plain(spec: str) -> LoadedWeights:
    """Load a full model: ``embedded``, an HF model folder or a ``.gguf`` file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise GeneratorError(
            f"local models need the 'hf' extra ({exc.name} is missing) - "
            "run `pip install 'tuneproof[hf]'`"
        ) from exc
    hf_logging.disable_progress_bar()

    gguf_file: str | None = None
    if spec == EMBEDDED_NAME:
        path = embedded_gguf_path()
        folder, gguf_file, name = path.parent, path.name, EMBEDDED_MODEL_ID
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise GeneratorError(
                f"model '{spec}' not found - give 'embedded', an HF model folder or a .gguf file "
                "(models are never downloaded)"
            )
        if path.is_file() and path.suffix == ".gguf":
            folder, gguf_file, name = path.parent, path.name, path.name
        elif path.is_dir():
            folder, name = path, path.name
            check_model_folder(spec, folder)
        else:
            raise GeneratorError(f"model '{spec}' is neither a folder nor a .gguf file")

    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}

    def load() -> tuple[Any, Any]:
        with _quiet_gguf_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        return model, tokenizer

    sha = path_sha256(folder / gguf_file) if gguf_file else None
    try:
        if gguf_file and sha:  # dequantised once, then read from the model cache
            model, tokenizer = load_gguf_cached(folder / gguf_file, sha, load)
        else:
            model, tokenizer = load()
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise GeneratorError(f"cannot load model '{spec}': {detail}") from exc
    model.eval()
    identity = ModelIdentity(name=name, backend="transformers", source=str(path), sha256=sha)
    return LoadedWeights(model, tokenizer, identity)


@contextlib.contextmanager
def _quiet_gguf_progress() -> Iterator[None]:
    """Silence transformers' GGUF de-quantisation bar (a bare tqdm that ignores
    ``disable_progress_bar``): our commands draw their own progress."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original
