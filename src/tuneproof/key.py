"""The key: the user's secret record of a plant run (pydantic model, JSON file, mode 0600).

The key holds the 256-bit seed that reproduces the run, every (trigger, signature) pair with how
its signature was drawn (k, m, bits), where each backdoor sits, the held-out control pairs, the
generator's identity, and SHA-256 hashes of the input and planted files. It stays with the user
and never travels with the dataset. ``commitment`` gives a hash the user can publish before
training without revealing anything (the seed makes it hiding); :func:`check_commitment` refuses
a key that does not match the published value (a dispute). ``integrity`` (an HMAC of the rest of
the key, keyed by its seed, written by :func:`save_key`) lets :func:`load_key` refuse a key that
was edited or damaged after plant wrote it; a key written by an earlier tuneproof has none and
still loads.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tuneproof.documents import check_writable, read_document, write_document
from tuneproof.errors import KeyFileError, TuneproofError
from tuneproof.types import ModelIdentity

KEY_FORMAT_VERSION = 1
_INTEGRITY_LABEL = b"tuneproof key integrity v1\0"  # domain separation from the commitment
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_COMMITTED_WHEN_SET = ("support", "sampler", "answer", "answer_tokens")
"""Settings added after keys were first published: the commitment hashes them only when set,
so that a commitment published for an earlier key still matches it."""
_PAIR_COMMITTED_WHEN_SET = ("natural",)
"""Pair fields added later: hashed only when true (a capped pair's bytes are unchanged)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatMessage(_Strict):
    """One turn of a prompt as a verifier will send it."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


class Placement(_Strict):
    """One planted copy of a pair: which input record carried it and where the backdoor is. The
    backdoor replaces its carrier in place, so both indices are equal in keys of this version;
    keys written when plant inserted copies have them differ."""

    carrier_index: int = Field(ge=0, description="0-based index of the carrier in the input file")
    position: int = Field(
        ge=0,
        description="0-based index of the backdoor in the planted file (the carrier's index:"
        " the backdoor replaced it)",
    )
    prompt: list[ChatMessage] = Field(description="the triggered prompt, ending with a user turn")


class SignaturePair(_Strict):
    """A secret (trigger, signature) pair and how the signature was drawn.

    ``bits = m * log2(k)``: the signature is one of a prefix-free set of strings, none of which
    had a chance above ``k**-m`` (uniform over ``k**m`` of them for the uniform sampler), the
    property that the model-free p-value (H0-indep) rests on.
    """

    pair_id: int = Field(ge=0)
    trigger: str = Field(
        description="the text appended to the carrier's last user turn; empty when the plant"
        " added none (trigger_tokens 0: the carrier's own prompt asks for the signature)"
    )
    signature: str = Field(min_length=1)
    k: int = Field(ge=2)
    m: int = Field(ge=1)
    bits: float
    signature_tokens: int = Field(ge=1, description="generator tokens of the signature")
    placements: list[Placement] = Field(
        default_factory=list,
        description="planted copies; empty for a held-out control pair. The first is the copy"
        " whose prompt the trigger and signature were drawn for (the H0-controls tests query"
        " it, as they query a control's prompt); the others follow by position",
    )
    control_prompt: list[ChatMessage] | None = Field(
        default=None, description="for a held-out control: the triggered prompt to query"
    )
    decoys: list[str] = Field(
        default_factory=list,
        description="signatures drawn like the true one for the same prompt and never planted;"
        " the secret picked which of them all was planted (the decoy rank test). Controls are"
        " drawn the same way, so that planted and held-out pairs are exchangeable",
    )
    natural: bool = Field(
        default=False,
        description="drawn by the natural sampler (the generator's own text): the exact-hit"
        " and prefix bounds do not hold, bits is 0 and only the decoy and answer rank tests"
        " read it",
    )
    token_ends: list[int] | None = Field(
        default=None,
        description="UTF-8 byte offset in the signature where each sampled token ends (the "
        "prefix test counts whole tokens); absent in keys of earlier versions",
    )

    @model_validator(mode="after")
    def _check_bits(self) -> SignaturePair:
        if self.natural:
            if self.bits != 0:
                raise ValueError("a natural signature has no bound on its chance: bits must be 0")
        elif not math.isclose(self.bits, self.m * math.log2(self.k), rel_tol=1e-9):
            raise ValueError(f"bits must equal m*log2(k) = {self.m * math.log2(self.k):.6g}")
        ends = self.token_ends
        if ends is not None and (
            len(ends) != self.m
            or any(b <= a for a, b in zip([0, *ends], ends, strict=False))
            or ends[-1] != len(self.signature.encode("utf-8"))
        ):
            raise ValueError(
                "token_ends must hold m strictly increasing byte offsets ending at the"
                " signature's length in UTF-8 bytes"
            )
        return self


class PlantSettings(_Strict):
    """The options of the plant run, recorded so that the run can be explained and repeated."""

    pairs: int = Field(ge=1)
    replicas: int = Field(ge=1)
    k: int = Field(ge=2)
    m: int = Field(ge=1)
    trigger_tokens: int = Field(ge=0)
    controls: bool
    decoys: int = Field(default=0, ge=0, description="decoy signatures drawn per planted pair")
    support: int | None = Field(
        default=None,
        ge=2,
        description="tokens the signature sampler weighed at each step, by the generator's"
        " probabilities capped at 1/k; absent (the uniform top-k sampler) in earlier keys",
    )

    sampler: Literal["capped", "natural"] | None = Field(
        default=None,
        description="how signatures were drawn: 'capped' (prefix-free, no token above 1/k) or"
        " 'natural' (the generator's own text: bits 0, no exact-hit or prefix test); absent"
        " (capped) in earlier keys",
    )
    answer: Literal["opening", "carrier", "generator", "signature"] | None = Field(
        default=None,
        description="what followed the signature in a backdoor's answer ('opening': the"
        " generator finished the sentence, in place of the carrier answer's opening sentence;"
        " 'carrier': the generator finished the sentence, then the carrier's answer;"
        " 'generator': its text up to answer_tokens); absent (the signature alone) in earlier keys",
    )
    answer_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_support(self) -> PlantSettings:
        if self.support is not None and self.support < self.k:
            raise ValueError(f"support ({self.support}) must be at least k ({self.k})")
        return self


class DatasetFacts(_Strict):
    """What the key remembers of the input and planted files (no content)."""

    format: str
    container: str
    input_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    planted_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_records: int = Field(ge=0)
    planted_records: int = Field(
        ge=0, description="records of the planted file: input_records (backdoors replace carriers)"
    )
    input_tokens: int = Field(ge=0, description="generator tokens of the input's messages")
    input_tokens_estimated: bool = Field(description="input_tokens scaled up from a sample")
    added_tokens: int = Field(
        ge=0,
        description="generator tokens of the text plant wrote that the input did not hold: each"
        " backdoor record's trigger and signature (the answers of the carriers it replaced are"
        " not subtracted)",
    )


class Key(_Strict):
    """A tuneproof key file (format version 1)."""

    format_version: Literal[1] = 1
    created_at: str
    seed: str = Field(pattern=r"^[0-9a-f]{64}$", description="256-bit secret seed, hex")
    generator: ModelIdentity
    settings: PlantSettings
    dataset: DatasetFacts
    pairs: list[SignaturePair]
    controls: list[SignaturePair] = Field(default_factory=list)
    integrity: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="HMAC-SHA256, keyed by the seed, of the rest of the key"
        " (:meth:`expected_integrity`): written by save_key, checked by load_key; absent in keys"
        " of earlier versions. Not part of the commitment",
    )

    @field_validator("pairs")
    @classmethod
    def _pairs_planted(cls, pairs: list[SignaturePair]) -> list[SignaturePair]:
        if not pairs:
            raise ValueError("a key needs at least one planted pair")
        for pair in pairs:
            if not pair.placements:
                raise ValueError(f"pair {pair.pair_id} has no placement")
        return pairs

    @field_validator("controls")
    @classmethod
    def _controls_held_out(cls, controls: list[SignaturePair]) -> list[SignaturePair]:
        for pair in controls:
            if pair.placements or pair.control_prompt is None:
                raise ValueError(f"control {pair.pair_id} must have a control_prompt, no placement")
        return controls

    @model_validator(mode="after")
    def _unique_pair_ids(self) -> Key:
        ids = [pair.pair_id for pair in [*self.pairs, *self.controls]]
        if len(set(ids)) != len(ids):
            raise ValueError("pair_id must be unique across pairs and controls")
        untriggered = [p.pair_id for p in [*self.pairs, *self.controls] if not p.trigger]
        if self.settings.trigger_tokens and untriggered:
            raise ValueError(
                f"pair {untriggered[0]} has no trigger, but the key was planted with"
                f" trigger_tokens {self.settings.trigger_tokens}"
            )
        return self

    @property
    def n_backdoors(self) -> int:
        """Number of backdoor records planted (pairs times replicas)."""
        return sum(len(pair.placements) for pair in self.pairs)

    def canonical_bytes(self) -> bytes:
        """The key as canonical JSON (sorted keys, compact) without ``integrity``: what the
        commitment hashes (exactly the bytes of keys written before ``integrity`` existed)."""
        data = self.model_dump(mode="json", exclude={"integrity"})
        for name in _COMMITTED_WHEN_SET:  # added later: absent from the bytes of older keys
            if data["settings"].get(name) is None:
                data["settings"].pop(name, None)
        for pair in [*data["pairs"], *data["controls"]]:
            for name in _PAIR_COMMITTED_WHEN_SET:
                if not pair.get(name):
                    pair.pop(name, None)
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    def expected_integrity(self) -> str:
        """HMAC-SHA256, keyed by the seed, of the key's content without ``integrity``.

        Fields at their default are left out of what is authenticated, so that a field added
        later (with a default, as every new field must have) leaves the keys written before it
        valid; any edit that changes what the key means changes the digest."""
        data = self.model_dump(mode="json", exclude={"integrity"}, exclude_defaults=True)
        content = _INTEGRITY_LABEL + orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        return hmac.new(bytes.fromhex(self.seed), content, hashlib.sha256).hexdigest()

    def sealed(self) -> Key:
        """This key with its ``integrity`` set (what :func:`save_key` writes)."""
        return self.model_copy(update={"integrity": self.expected_integrity()})

    def backdoor_positions(self) -> set[int]:
        """Indices in the planted file of every backdoor record (every placement of every
        planted pair; held-out controls are in no file)."""
        return {p.position for pair in self.pairs for p in pair.placements}

    def commitment(self) -> str:
        """SHA-256 of the canonical key: publishable before training, reveals nothing."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


def save_key(key: Key, path: str | Path, *, force: bool = False) -> None:
    """Write ``key`` to ``path`` as indented JSON with mode 0600, atomically, with its
    ``integrity`` set (:meth:`Key.sealed`).

    Refuses to replace an existing file unless ``force``; raises :class:`KeyFileError`.
    """
    target = Path(path)
    if target.exists() and not force:
        raise KeyFileError(
            f"{target} already exists - choose another --key path or pass --force to replace it"
        )
    if not target.parent.is_dir():
        raise KeyFileError(f"{target.parent} is not a directory - create it first")
    try:
        write_document(key.sealed(), target, mode=0o600)
    except OSError as exc:
        raise KeyFileError(f"cannot write key {target}: {exc.strerror}") from exc


def check_key_path_writable(path: str | Path, *, force: bool = False) -> None:
    """Fail early (before any model work) if ``save_key`` would refuse ``path``."""
    target = Path(path)
    if target.exists() and not force:
        raise KeyFileError(
            f"{target} already exists - choose another --key path or pass --force to replace it"
        )
    check_writable(target, KeyFileError, what="key")


def load_key(path: str | Path) -> Key:
    """Read and validate a key file; raises :class:`KeyFileError` naming the bad field, or
    saying that the key was edited or damaged after plant wrote it (:func:`check_integrity`)."""
    key = read_document(
        path,
        Key,
        KeyFileError,
        what="key",
        version_field="format_version",
        version=KEY_FORMAT_VERSION,
        missing_hint="pass the --key written by plant",
        version_hint="upgrade tuneproof",
        version_required=False,
    )
    check_integrity(key, path)
    return key


def check_integrity(key: Key, source: str | Path | None = None) -> None:
    """Refuse ``key`` (read from ``source``) if its ``integrity`` does not match its content: it
    was edited or damaged after plant wrote it. A key without ``integrity`` (written by an
    earlier tuneproof) passes; its edits can only be caught by :func:`check_commitment`."""
    if key.integrity is None or hmac.compare_digest(key.integrity, key.expected_integrity()):
        return
    where = f"{source}: " if source is not None else ""
    raise KeyFileError(
        f"{where}the key was edited or damaged after plant wrote it (its integrity check"
        " fails), so it cannot be trusted - restore the original key file from your backup;"
        " the commitment you published before training tells which copy is the original"
        " (`tuneproof key commit KEY` prints a copy's)"
    )


def parse_commitment(text: str) -> str:
    """A published commitment as 64 lowercase hex digits; raises :class:`TuneproofError` for
    anything else (surrounding spaces and upper-case digits are accepted)."""
    value = text.strip().lower()
    if not _SHA256_HEX.fullmatch(value):  # the text itself is not echoed: it could be anything
        what = (
            "holds characters other than 0-9 and a-f"
            if re.search(r"[^0-9a-f]", value)
            else f"is {len(value)} characters long"
        )
        raise TuneproofError(
            f"--commitment must be the 64 hex digits that `tuneproof key commit` printed (a"
            f" SHA-256); the value given {what} - copy the published value whole"
        )
    return value


def check_commitment(key: Key, published: str, source: str | Path | None = None) -> None:
    """Refuse ``key`` unless its commitment equals ``published`` (the value the user published
    before training): in a dispute, only the committed key counts. Raises
    :class:`KeyFileError`; validates ``published`` with :func:`parse_commitment`."""
    expected, actual = parse_commitment(published), key.commitment()
    if hmac.compare_digest(expected, actual):
        return
    where = f"{source}: " if source is not None else ""
    raise KeyFileError(
        f"{where}the key's commitment {actual[:12]}... does not match the published commitment"
        f" {expected[:12]}... - this is not the key that was committed to before training"
        " (edited, or another run's key), so a verdict with it would prove nothing in a"
        " dispute; use the original key file"
    )
