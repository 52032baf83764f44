"""The dequantised-model cache: the embedded GGUF is dequantised once, kept as safetensors, and the
model read back from the cache is the same model (identity, tokenizer, chat template, weights and
log-probs, bit for bit). A damaged entry is rebuilt; a cache that cannot be written only warns."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from tuneproof.backends.hf import HFCausalLM, load_hf_model
from tuneproof.backends.model_cache import (
    CACHE_ENV,
    MANIFEST,
    ModelCacheWarning,
    cache_root,
    entry_key,
    load_gguf_cached,
    store_entry,
)
from tuneproof.documents import path_sha256
from tuneproof.embedded import EMBEDDED_MODEL_ID, embedded_gguf_path
from tuneproof.types import ModelIdentity

CHATS = [
    [("user", "What is AI?")],
    [("system", "You are terse."), ("user", "Name a colour.")],
    [("user", "Écris une phrase en français. 🙂"), ("assistant", "Bonjour."), ("user", "Encore")],
]
TEXTS = ["AI is a field.", "  two  spaces\nand a newline\t", "<|im_start|> not special", "数学"]


class Loaded(NamedTuple):
    root: Path  # the cache folder
    cold: HFCausalLM  # loaded with an empty cache (from the GGUF; writes the entry)
    warm: HFCausalLM  # loaded again (from the entry)
    manifest_mtime: int  # of the entry's manifest, right after the cold load


def leftovers(root: Path) -> list[str]:
    """Temporary or partial folders in the cache folder (hidden names)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def gguf_sha() -> str:
    return path_sha256(embedded_gguf_path())


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(root))
        cold = load_hf_model("embedded")
        mtime = (root / entry_key(gguf_sha()) / MANIFEST).stat().st_mtime_ns
        warm = load_hf_model("embedded")
    return Loaded(root, cold, warm, mtime)


def test_cache_folder_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "tuneproof" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tuneproof" / "models"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.setenv(CACHE_ENV, "OFF")
    assert cache_root() is None


def test_off_switch_loads_without_touching_any_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(CACHE_ENV, "off")
    sentinel = (object(), object())
    assert load_gguf_cached(Path("m.gguf"), "ab" * 32, lambda: sentinel) is sentinel
    assert list(tmp_path.iterdir()) == []


def test_key_records_the_gguf_content_and_library_versions() -> None:
    import importlib.metadata

    import transformers

    key = entry_key("ab" * 32)
    assert key.startswith("ab" * 32 + "-")
    assert f"-transformers{transformers.__version__}-" in key
    assert key.endswith(f"-gguf{importlib.metadata.version('gguf')}")


@pytest.mark.model
def test_cold_load_writes_a_whole_entry_and_warm_load_reads_it(loaded: Loaded) -> None:
    entry = loaded.root / entry_key(gguf_sha())
    assert [p.name for p in loaded.root.iterdir()] == [entry.name]
    manifest = json.loads((entry / MANIFEST).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])
    assert sorted(p.name for p in entry.iterdir()) == sorted([*manifest["files"], MANIFEST])
    # the cold model came from the GGUF, the warm one from the entry, which it left untouched
    assert getattr(loaded.cold.model.config, "quantization_config", None) is not None
    assert getattr(loaded.warm.model.config, "quantization_config", None) is None
    assert (entry / MANIFEST).stat().st_mtime_ns == loaded.manifest_mtime
    assert leftovers(loaded.root) == []


@pytest.mark.model
def test_identity_is_the_gguf_whether_cached_or_not(loaded: Loaded) -> None:
    path = embedded_gguf_path()
    expected = ModelIdentity(
        name=EMBEDDED_MODEL_ID, backend="transformers", source=str(path), sha256=gguf_sha()
    )
    assert loaded.cold.identity == expected
    assert loaded.warm.identity == expected


@pytest.mark.model
def test_tokenizer_and_chat_template_are_identical(loaded: Loaded) -> None:
    cold, warm = loaded.cold, loaded.warm
    assert warm.tokenizer.chat_template == cold.tokenizer.chat_template
    assert warm.tokenizer.get_vocab() == cold.tokenizer.get_vocab()
    assert warm.tokenizer.special_tokens_map == cold.tokenizer.special_tokens_map
    assert (warm.pad_id, warm.stop_ids()) == (cold.pad_id, cold.stop_ids())
    for chat in CHATS:
        assert warm.chat_prompt_ids(chat) == cold.chat_prompt_ids(chat)
    for text in TEXTS:
        assert warm.text_ids(text) == cold.text_ids(text)
        ids = cold.text_ids(text)
        assert warm.tokenizer.decode(ids) == cold.tokenizer.decode(ids)


@pytest.mark.model
def test_weights_and_next_token_logprobs_are_identical(loaded: Loaded) -> None:
    import torch

    cold_weights, warm_weights = loaded.cold.model.state_dict(), loaded.warm.model.state_dict()
    assert set(warm_weights) == set(cold_weights)
    assert all(torch.equal(warm_weights[k], cold_weights[k]) for k in cold_weights)
    for chat in CHATS:
        ids = loaded.cold.chat_prompt_ids(chat)
        cold_lp = loaded.cold.next_token_logprobs(ids)
        warm_lp = loaded.warm.next_token_logprobs(ids)
        assert np.array_equal(warm_lp, cold_lp)
    assert loaded.warm.generate(CHATS, 12) == loaded.cold.generate(CHATS, 12)


@pytest.mark.model
def test_gguf_path_shares_the_entry_and_keeps_its_own_identity(
    loaded: Loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(loaded.root))
    path = embedded_gguf_path()
    model = load_hf_model(str(path))
    assert model.identity == ModelIdentity(
        name=path.name, backend="transformers", source=str(path), sha256=gguf_sha()
    )
    assert getattr(model.model.config, "quantization_config", None) is None  # read from cache
    assert len(list(loaded.root.iterdir())) == 1


@pytest.mark.model
def test_truncated_weights_are_rebuilt(
    loaded: Loaded, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    entry = tmp_path / entry_key(gguf_sha())
    shutil.copytree(loaded.root / entry.name, entry)
    weights = entry / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.warns(ModelCacheWarning, match="damaged"):
        model = load_hf_model("embedded")
    assert model.identity == loaded.cold.identity
    assert weights.stat().st_size == (loaded.root / entry.name / weights.name).stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]
    ids = loaded.cold.chat_prompt_ids(CHATS[0])
    assert np.array_equal(model.next_token_logprobs(ids), loaded.cold.next_token_logprobs(ids))


def _drop_a_tensor(entry: Path) -> None:
    """Rewrite the weights without one tensor and record the new file in the manifest, so that
    only loading the entry finds the problem."""
    from safetensors.torch import load_file, save_file

    weights = entry / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.norm.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"]["model.safetensors"] = {
        "size": weights.stat().st_size,
        "sha256": path_sha256(weights),
    }
    (entry / MANIFEST).write_text(json.dumps(manifest))


DAMAGES: dict[str, tuple[Callable[[Path], object], str]] = {  # damage, reason warned
    "missing tokenizer file": (
        lambda e: (e / "tokenizer.json").unlink(),
        "tokenizer.json is missing",
    ),
    "missing manifest": (lambda e: (e / MANIFEST).unlink(), "missing or unreadable"),
    "manifest not JSON": (lambda e: (e / MANIFEST).write_text("[1, "), "missing or unreadable"),
    "flipped byte": (lambda e: _flip_last_byte(e / "config.json"), "config.json does not match"),
    "weights missing a tensor": (_drop_a_tensor, "model.norm.weight"),
}


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.model
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_entry_is_removed_and_rebuilt(
    loaded: Loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The GGUF load is stood in for by the cold model (the rebuild's dequantisation is the one
    tested above); the entry is rewritten whole and the next load reads it."""
    entry = tmp_path / entry_key(gguf_sha())
    shutil.copytree(loaded.root / entry.name, entry)
    damage_entry, reason = DAMAGES[damage]
    damage_entry(entry)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls: list[int] = []

    def from_gguf() -> tuple[Any, Any]:
        calls.append(1)
        return loaded.cold.model, loaded.cold.tokenizer

    with pytest.warns(ModelCacheWarning, match=f"damaged.*{reason}"):
        model, _ = load_gguf_cached(embedded_gguf_path(), gguf_sha(), from_gguf)
    assert model is loaded.cold.model and calls == [1]
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]
    again, tokenizer = load_gguf_cached(embedded_gguf_path(), gguf_sha(), from_gguf)
    assert calls == [1]  # read from the rebuilt entry
    assert again is not loaded.cold.model
    assert tokenizer.chat_template == loaded.cold.tokenizer.chat_template


@pytest.mark.model
@pytest.mark.parametrize("how", ["parent is a file", "read-only folder"])
def test_unwritable_cache_still_loads(
    loaded: Loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "parent is a file":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        root = blocker / "cache"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders (the other case covers it)")
        root = tmp_path / "cache"
        root.mkdir()
        root.chmod(0o555)
    monkeypatch.setenv(CACHE_ENV, str(root))
    try:
        with pytest.warns(ModelCacheWarning, match="cannot write the model cache"):
            model = load_hf_model("embedded")
        assert model.identity == loaded.cold.identity
        ids = loaded.cold.chat_prompt_ids(CHATS[1])
        assert np.array_equal(model.next_token_logprobs(ids), loaded.cold.next_token_logprobs(ids))
        assert not root.exists() or list(root.iterdir()) == []
    finally:
        if root.exists():
            root.chmod(0o755)


class FullDiskTokenizer:
    """A tokenizer whose save_pretrained writes half a file and then finds the disk full."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def save_pretrained(self, folder: str | Path) -> None:
        (Path(folder) / "tokenizer.json").write_text('{"half": ')
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.model
def test_full_disk_leaves_nothing_behind(loaded: Loaded, tmp_path: Path) -> None:
    entry = tmp_path / entry_key(gguf_sha())
    with pytest.warns(ModelCacheWarning, match="No space left"):
        assert not store_entry(entry, loaded.cold.model, FullDiskTokenizer(loaded.cold.tokenizer))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.model
def test_lost_race_keeps_the_winner_and_stale_temporaries_are_swept(
    loaded: Loaded, tmp_path: Path
) -> None:
    entry = tmp_path / entry_key(gguf_sha())
    shutil.copytree(loaded.root / entry.name, entry)
    winner = (entry / MANIFEST).stat().st_mtime_ns
    stale = tmp_path / f".{entry.name}.killed.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    assert store_entry(entry, loaded.cold.model, loaded.cold.tokenizer)
    assert (entry / MANIFEST).stat().st_mtime_ns == winner
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]
