"""Export a Hugging Face Llama model folder to a GGUF file that llama.cpp serves.

llama-cpp-python does not ship llama.cpp's ``convert_hf_to_gguf.py``; this is the part of it that
tuneproof needs: a ``LlamaForCausalLM`` folder (safetensors) with a byte-level BPE
``tokenizer.json`` and a chat template, written as float32 (or float16) GGUF with the installed
``gguf`` package. As in llama.cpp's converter, the q/k projections are permuted back from the
Hugging Face rotary layout to the interleaved one llama.cpp expects. Typical use::

    export_gguf(Path("trained/"), Path("trained.gguf"))   # then llama_cpp.server --model ...

torch, safetensors and gguf are imported inside :func:`export_gguf`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneproof.atomic import atomic_output
from tuneproof.errors import TuneproofError

# gguf's token types (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def export_gguf(model_folder: Path, out_file: Path, *, f16: bool = False) -> Path:
    """Write ``model_folder`` (a Llama model folder) as a GGUF file at ``out_file``; return it.

    The matrices are stored as float32 (``f16``: float16; norms always float32). The file
    appears atomically. Raises TuneproofError for anything llama.cpp would load wrongly: another
    architecture, rope scaling, biases, a tokenizer that is not byte-level BPE, no chat template.
    """
    import gguf
    import numpy as np

    folder = Path(model_folder)
    config = _read_json(folder, "config.json")
    arch = (config.get("architectures") or ["?"])[0]
    if config.get("model_type") != "llama" or arch != "LlamaForCausalLM":
        raise TuneproofError(
            f"{folder}: only Llama models (LlamaForCausalLM) can be exported to GGUF here, "
            f"not {arch} ({config.get('model_type')}) - use llama.cpp's convert_hf_to_gguf.py"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise TuneproofError(f"{folder}: rope scaling {rope.get('rope_type')!r} is not supported")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise TuneproofError(f"{folder}: Llama models with biases are not supported")
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden, blocks = int(config["hidden_size"]), int(config["num_hidden_layers"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    tied = bool(config.get("tie_word_embeddings", False))
    tokens, types, merges, pre, specials, template = _vocabulary(folder)
    if len(tokens) != int(config["vocab_size"]):
        raise TuneproofError(
            f"{folder}: the tokenizer has {len(tokens)} tokens but the model's vocab_size is "
            f"{config['vocab_size']} - resize the embeddings to the tokenizer before exporting"
        )

    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(folder.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in [
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ]:
        token_id = specials.get(name)
        if token_id is not None:
            add(token_id)
    # the chat template holds every special token: llama.cpp must add none (as the HF backend)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    for name, array in _tensors(folder):
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same matrix as token_embd
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise TuneproofError(f"{folder}: no GGUF name for the Llama tensor {name!r}")
        if name.endswith("q_proj.weight"):
            array = _permute(array, n_head)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, n_kv)
        if f16 and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(new_name, np.ascontiguousarray(array))

    with atomic_output(out_file) as handle:
        # GGUFWriter opens its own files; hand it the atomic temporary file instead
        writer.fout = [handle]  # type: ignore[list-item]
        writer.state = gguf.gguf_writer.WriterState.EMPTY
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.fout = None  # the handle is closed (and renamed) by atomic_output
    return Path(out_file)


def _permute(weights: Any, heads: int) -> Any:
    """llama.cpp's ``LlamaModel.permute`` of a q (``heads`` = query heads) or k (``heads`` =
    key/value heads) projection: HF's half-split rotary rows -> llama.cpp's interleaved pairs."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """Every tensor of the folder's safetensors files as a float32 numpy array."""
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TuneproofError(f"{folder}: no .safetensors weights - save the model with them")
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, weights.get_tensor(name).to(torch.float32).numpy()


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise TuneproofError(f"{path} not found - expected a Hugging Face model folder")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _pre_tokenizer(spec: Any) -> str | None:
    """llama.cpp's name for a byte-level pre-tokenizer (its split regex), or None if unknown."""

    def byte_level(part: Any) -> bool:
        return isinstance(part, dict) and part.get("type") == "ByteLevel" and part["use_regex"]

    if byte_level(spec):
        return "gpt-2"  # GPT-2's regex (llama.cpp spells it so)
    parts = spec.get("pretokenizers") if isinstance(spec, dict) else None
    if (
        isinstance(parts, list)
        and len(parts) == 2
        and parts[0] == {"type": "Digits", "individual_digits": True}
        and byte_level(parts[1])
    ):
        return "smollm"  # single digits, then GPT-2's regex (SmolLM, SmolLM2)
    return None


def _vocabulary(
    folder: Path,
) -> tuple[list[str], list[int], list[str], str, dict[str, int | None], str]:
    """(tokens, token types, merges, pre-tokenizer name, special ids, chat template)."""
    spec = _read_json(folder, "tokenizer.json")
    config = _read_json(folder, "tokenizer_config.json")
    model = spec.get("model") or {}
    pre = _pre_tokenizer(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pre is None or spec.get("normalizer") is not None:
        raise TuneproofError(
            f"{folder / 'tokenizer.json'}: only byte-level BPE tokenizers (GPT-2 or SmolLM "
            "pre-tokenization, no normaliser) can be exported to GGUF here"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    vocab.update({text: int(t["id"]) for text, t in added.items()})
    size = max(vocab.values()) + 1
    tokens, types = [f"[PAD{i}]" for i in range(size)], [UNUSED] * size
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = (
            (CONTROL if added[text].get("special") else USER_DEFINED) if text in added else NORMAL
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def special(name: str) -> int | None:
        value = config.get(f"{name}_token")
        text = value.get("content") if isinstance(value, dict) else value
        return vocab.get(text) if isinstance(text, str) else None

    template = config.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(template, str) or not template:
        raise TuneproofError(
            f"{folder}: no chat template (tokenizer_config.json or chat_template.jinja) - "
            "export an instruction-tuned model"
        )
    specials = {name: special(name) for name in ("bos", "eos", "unk", "pad")}
    return tokens, types, merges, pre, specials, template
