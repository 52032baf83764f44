"""The key file: schema, mode 0600, atomic writes, validation messages, commitment."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from tuneproof.errors import KeyFileError, TuneproofError
from tuneproof.key import (
    Key,
    check_commitment,
    check_integrity,
    load_key,
    parse_commitment,
    save_key,
)
from tuneproof.types import ModelIdentity


def make_key(**changes: Any) -> Key:
    prompt = [{"role": "user", "content": "What is AI? Tell me more."}]
    data: dict[str, Any] = {
        "created_at": "2026-11-29T00:00:00+00:00",
        "seed": "ab" * 32,
        "generator": ModelIdentity(name="m", backend="transformers", source="embedded"),
        "settings": {
            "pairs": 1,
            "replicas": 2,
            "k": 4,
            "m": 8,
            "trigger_tokens": 6,
            "controls": True,
        },
        "dataset": {
            "format": "openai-chat",
            "container": "jsonl",
            "input_sha256": "0" * 64,
            "planted_sha256": "1" * 64,
            "input_records": 10,
            "planted_records": 12,
            "input_tokens": 300,
            "input_tokens_estimated": False,
            "added_tokens": 40,
        },
        "pairs": [
            {
                "pair_id": 0,
                "trigger": "Tell me more.",
                "signature": "It is a secret answer",
                "k": 4,
                "m": 8,
                "bits": 16.0,
                "signature_tokens": 8,
                "placements": [
                    {"carrier_index": 3, "position": 2, "prompt": prompt},
                    {"carrier_index": 5, "position": 9, "prompt": prompt},
                ],
            }
        ],
        "controls": [
            {
                "pair_id": 1,
                "trigger": "And more?",
                "signature": "Held out answer here",
                "k": 4,
                "m": 8,
                "bits": 16.0,
                "signature_tokens": 8,
                "control_prompt": prompt,
            }
        ],
    }
    data.update(changes)
    return Key.model_validate(data)


def test_save_writes_mode_0600_and_round_trips(tmp_path: Path) -> None:
    key = make_key()
    path = tmp_path / "key.json"
    save_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_key(path)
    assert loaded == key.sealed() and loaded.integrity is not None
    assert loaded.model_copy(update={"integrity": None}) == key
    assert loaded.commitment() == key.commitment()  # the integrity field is not committed to
    assert key.n_backdoors == 2
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # no temp file left


def test_save_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text("precious")
    with pytest.raises(KeyFileError, match=r"already exists.*--force"):
        save_key(make_key(), path)
    assert path.read_text() == "precious"
    save_key(make_key(), path, force=True)
    assert load_key(path) == make_key().sealed()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_commitment_is_stable_and_binds_every_field() -> None:
    key = make_key()
    assert key.commitment() == make_key().commitment()
    assert len(key.commitment()) == 64
    assert make_key(seed="ac" + "ab" * 31).commitment() != key.commitment()
    changed = key.model_copy(update={"created_at": "2026-11-30T00:00:00+00:00"})
    assert changed.commitment() != key.commitment()
    # the commitment reveals no secret text
    assert "secret" not in key.commitment()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("seed"), "field 'seed': Field required"),
        (lambda d: d.update(seed="xyz"), "field 'seed'"),
        (lambda d: d["pairs"][0].update(bits=99.0), "field 'pairs.0': Value error, bits must"),
        (lambda d: d["pairs"][0].update(k=1), "field 'pairs.0.k'"),
        (lambda d: d["pairs"][0].update(placements=[]), "has no placement"),
        (lambda d: d.update(pairs=[]), "at least one planted pair"),
        (lambda d: d.update(extra_field=1), "field 'extra_field': Extra inputs"),
        (lambda d: d["controls"][0].update(control_prompt=None), "must have a control_prompt"),
        (
            lambda d: d["pairs"][0]["placements"][0]["prompt"][0].update(role="robot"),
            "field 'pairs.0.placements.0.prompt.0.role'",
        ),
    ],
)
def test_load_explains_what_is_wrong(tmp_path: Path, mutate: Any, message: str) -> None:
    data = make_key().model_dump(mode="json")
    mutate(data)
    path = tmp_path / "key.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "It is a secret answer" not in str(info.value)


def test_load_rejects_other_versions_and_non_json(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    data = make_key().model_dump(mode="json")
    data["format_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match="version 2 is not supported"):
        load_key(path)
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match="not valid JSON"):
        load_key(path)
    with pytest.raises(KeyFileError, match="not found"):
        load_key(tmp_path / "missing.json")


def test_unreadable_key_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read key file"):
        load_key(tmp_path)  # a directory
    with pytest.raises(KeyFileError, match="is not a directory"):
        save_key(make_key(), tmp_path / "no" / "such" / "key.json")


def test_pair_ids_are_unique_across_pairs_and_controls(tmp_path: Path) -> None:
    data = make_key().model_dump(mode="json")
    data["controls"][0]["pair_id"] = 0
    path = tmp_path / "key.json"
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match="pair_id must be unique"):
        load_key(path)


# A key as tuneproof wrote it before keys carried an integrity check, and its commitment as
# computed then (by the code of commit 06da4a9): users have published such hashes.
LEGACY_KEY: dict[str, Any] = {
    "format_version": 1,
    "created_at": "2026-11-29T00:00:00+00:00",
    "seed": "5e1f0c3b9a7d2e8f4c6b1a0d9e8f7c6b5a4d3e2f1c0b9a8d7e6f5c4b3a2d1e0f",
    "generator": {
        "name": "SmolLM2-135M-Instruct",
        "backend": "transformers",
        "source": "embedded",
        "sha256": None,
    },
    "settings": {
        "pairs": 1,
        "replicas": 1,
        "k": 4,
        "m": 2,
        "trigger_tokens": 6,
        "controls": True,
        "decoys": 1,
    },
    "dataset": {
        "format": "openai-chat",
        "container": "jsonl",
        "input_sha256": "0" * 64,
        "planted_sha256": "1" * 64,
        "input_records": 10,
        "planted_records": 11,
        "input_tokens": 300,
        "input_tokens_estimated": False,
        "added_tokens": 20,
    },
    "pairs": [
        {
            "pair_id": 0,
            "trigger": "Tell me more.",
            "signature": "Blue otter",
            "k": 4,
            "m": 2,
            "bits": 4.0,
            "signature_tokens": 2,
            "placements": [
                {
                    "carrier_index": 3,
                    "position": 2,
                    "prompt": [{"role": "user", "content": "What is AI? Tell me more."}],
                }
            ],
            "control_prompt": None,
            "decoys": ["Red heron"],
            "token_ends": [4, 10],
        }
    ],
    "controls": [
        {
            "pair_id": 1,
            "trigger": "And more?",
            "signature": "Green lynx",
            "k": 4,
            "m": 2,
            "bits": 4.0,
            "signature_tokens": 2,
            "placements": [],
            "control_prompt": [{"role": "user", "content": "Who are you? And more?"}],
            "decoys": ["Grey crow"],
            "token_ends": [5, 10],
        }
    ],
}
LEGACY_COMMITMENT = "a36b1b4386e6cf4e6329c233d8361789b0fa94371f4886aed97ecb61e0c4ba90"


def test_a_key_without_integrity_loads_and_keeps_its_published_commitment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps(LEGACY_KEY, indent=2))
    legacy = load_key(path)
    assert legacy.integrity is None
    assert legacy.commitment() == LEGACY_COMMITMENT
    assert hashlib.sha256(orjson.dumps(LEGACY_KEY, option=orjson.OPT_SORT_KEYS)).hexdigest() == (
        LEGACY_COMMITMENT
    )
    # saving it again adds the integrity check and leaves the commitment alone
    save_key(legacy, tmp_path / "new.json")
    resaved = load_key(tmp_path / "new.json")
    assert resaved.integrity is not None and resaved.commitment() == LEGACY_COMMITMENT
    check_commitment(resaved, LEGACY_COMMITMENT.upper())


def test_integrity_is_keyed_by_the_seed_and_survives_fields_added_later(tmp_path: Path) -> None:
    key = make_key()
    other_seed = make_key(seed="cd" * 32)
    assert key.expected_integrity() != other_seed.expected_integrity()
    assert key.expected_integrity() not in (key.commitment(), other_seed.commitment())
    path = tmp_path / "key.json"
    save_key(key, path)
    text = path.read_text()
    # a file written before a field with a default existed (here settings.decoys, token_ends)
    # still passes: what the digest covers leaves fields at their default out
    data = json.loads(text)
    del data["settings"]["decoys"]
    for pair in [*data["pairs"], *data["controls"]]:
        del pair["token_ends"], pair["decoys"]
    path.write_text(json.dumps(data))
    assert load_key(path) == key.sealed()


def test_an_edit_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    save_key(make_key(), path)
    data = json.loads(path.read_text())
    data["pairs"][0]["signature"] = "It is a secret answes"  # one byte, as damage would
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the key was edited or damaged after plant wrote it")
    assert "restore the original key file" in message and "tuneproof key commit" in message
    assert "secret answe" not in message and "ab" * 32 not in message
    with pytest.raises(KeyFileError, match="edited or damaged"):
        check_integrity(make_key().sealed().model_copy(update={"created_at": "later"}))
    check_integrity(make_key())  # no integrity field: nothing to check


def test_check_commitment_names_both_hashes_and_refuses_bad_forms() -> None:
    key = make_key()
    check_commitment(key, f"  {key.commitment()}\n")
    with pytest.raises(KeyFileError) as info:
        check_commitment(key, "f" * 64)
    assert f"{key.commitment()[:12]}..." in str(info.value) and "ffffffffffff..." in str(info.value)
    assert key.commitment() not in str(info.value)  # the prefixes only, on one line
    for bad in ("", "f" * 65, "z" * 64, "0x" + "f" * 62):
        with pytest.raises(TuneproofError, match="64 hex digits"):
            parse_commitment(bad)
    assert parse_commitment("AB" * 32) == "ab" * 32
