"""A transformers tokenizer's vocabulary as the byte strings the samplers read: each token id's
exact bytes (byte-level BPE decoded, SentencePiece pieces with their spaces), and the special ids
(:class:`~tuneproof.backends.base.TokenVocabulary`)."""

from __future__ import annotations

from typing import Any

from tuneproof.backends.base import TokenVocabulary


def byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printed character -> byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def token_byte_table(tokenizer: Any) -> TokenVocabulary:
    """Return the true byte string of every token of a ``transformers`` fast tokenizer.

    Byte-level BPE (GPT-2, Llama 3, SmolLM) maps printed characters back to bytes; SentencePiece
    style vocabularies map ``▁`` to a space and ``<0xNN>`` to the byte. Added/special tokens get
    their id in ``special_ids`` (they are never sampled).
    """
    size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    decoder_kind = (
        type(tokenizer.backend_tokenizer.decoder).__name__
        if hasattr(tokenizer, "backend_tokenizer")
        else ""
    )
    special = set(getattr(tokenizer, "all_special_ids", []))
    special.update(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    table: list[bytes] = []
    if decoder_kind == "ByteLevel":
        byte_of = byte_level_decoder()
        for token in tokens:
            try:
                table.append(bytes(byte_of[ch] for ch in token or ""))
            except KeyError:
                table.append(b"")
    else:
        for token in tokens:
            token = token or ""
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                table.append(bytes([int(token[3:5], 16)]))
            else:
                table.append(token.replace("▁", " ").encode("utf-8"))
    return TokenVocabulary(tuple(table), frozenset(special))
