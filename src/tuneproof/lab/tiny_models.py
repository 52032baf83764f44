"""Small real models for tests, the calibration world and benchmarks: the embedded model's
byte-level BPE tokenizer reduced to the tokens some texts need, and a tiny randomly initialised
Llama sized to it (2 layers, hidden 128: it learns a planted file in seconds on a CPU)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from tuneproof.backends.hf import byte_level_decoder, pad_id
from tuneproof.errors import TuneproofError


def compact_tokenizer(
    tokenizer: Any, texts: Iterable[str], extra_specials: Sequence[str] = ()
) -> Any:
    """A real byte-level BPE tokenizer reduced to what ``texts`` need.

    Keeps the byte-level base tokens (so every text the original encodes still encodes, and
    decodes back exactly), the special tokens (plus ``extra_specials`` as new ones), every
    token the texts tokenise to and the closure of their merge ancestry, and the merges among
    kept tokens in their original order; ids are renumbered compactly, specials first. On
    ``texts`` it gives the same token strings as ``tokenizer``. Returns a
    ``PreTrainedTokenizerFast`` with the same chat template and bos/eos/pad/unk tokens. Only
    byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM) work.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        raise TuneproofError("compact_tokenizer needs a byte-level BPE tokenizer")
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    producers: dict[str, list[tuple[str, str]]] = {}
    for left, right in merges:
        producers.setdefault(left + right, []).append((left, right))

    specials = [t["content"] for t in sorted(spec["added_tokens"], key=lambda t: t["id"])]
    specials += [s for s in extra_specials if s not in specials]
    # a byte the vocabulary lacks stays absent (SmolLM2: six control bytes, the never-used UTF-8
    # bytes C0 C1 F5-FF, and F1 F2 of planes 4-11): the original cannot encode such text either
    kept = {char for char in byte_level_decoder() if char in vocab}
    for text in texts:
        kept.update(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).tokens)
    kept -= set(specials)
    todo = list(kept)
    while todo:  # merge ancestry: every pair whose merge makes a kept token
        for pair in producers.get(todo.pop(), ()):
            for part in pair:
                if part not in kept:
                    kept.add(part)
                    todo.append(part)
    missing = kept - vocab.keys()
    if missing:
        raise TuneproofError(f"tokens {sorted(missing)[:5]} are not in the tokenizer's vocabulary")
    order = specials + sorted(kept, key=vocab.__getitem__)
    new_ids = {token: i for i, token in enumerate(order)}
    model["vocab"] = new_ids
    model["merges"] = [[a, b] for a, b in merges if a in kept and b in kept and a + b in kept]
    old_added = {t["content"]: t for t in spec["added_tokens"]}
    spec["added_tokens"] = [
        {
            **old_added.get(
                token,
                {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False},
            ),
            "content": token,
            "special": True,
            "id": new_ids[token],
        }
        for token in specials
    ]
    backend = Tokenizer.from_str(json.dumps(spec))
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=tokenizer.chat_template,
        clean_up_tokenization_spaces=False,
        model_max_length=getattr(tokenizer, "model_max_length", 8192),
        additional_special_tokens=[s for s in specials if s not in old_added],
        **{name: getattr(tokenizer, name) for name in names if getattr(tokenizer, name)},
    )


def tiny_llama(
    tokenizer: Any, hidden: int = 128, layers: int = 2, heads: int = 4, seed: int = 0
) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` sized to ``tokenizer`` (float32, eval mode),
    the same for the same seed; the global torch random state is left untouched."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=pad_id(tokenizer),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad_id(tokenizer)
    return model.eval()
