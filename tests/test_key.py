"""The key file: schema, mode 0600, atomic writes, validation messages, commitment."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tuneproof.errors import KeyFileError
from tuneproof.key import Key, load_key, save_key
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
    assert load_key(path) == key
    assert key.n_backdoors == 2
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # no temp file left


def test_save_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    path.write_text("precious")
    with pytest.raises(KeyFileError, match=r"already exists.*--force"):
        save_key(make_key(), path)
    assert path.read_text() == "precious"
    save_key(make_key(), path, force=True)
    assert load_key(path) == make_key()
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
