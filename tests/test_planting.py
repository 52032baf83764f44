"""`tuneproof plant` end to end with the real embedded model, and every bad-input case."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from conftest import sha256_of, write_jsonl

from tuneproof.cli.main import cli
from tuneproof.key import load_key
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant
from tuneproof.planting.sampler import sample_signature
from tuneproof.planting.secret import SecretStream

SEED = bytes(range(32))
K, M, TRIGGER = 4, 8, 6


@pytest.fixture(scope="module")
def factory(embedded_model: Any) -> ModelBackdoorFactory:
    return ModelBackdoorFactory(embedded_model, K, M, TRIGGER)


@pytest.fixture
def use_loaded_model(monkeypatch: pytest.MonkeyPatch, embedded_model: Any) -> None:
    """Make the CLI reuse the session's loaded model instead of loading it again (20 s)."""
    monkeypatch.setattr("tuneproof.backends.hf.load_hf_generator", lambda spec: embedded_model)


@pytest.mark.model
def test_plant_replaces_carriers_in_place_and_keeps_everything_else(
    tmp_path: Path, small_chat_file: Path, factory: ModelBackdoorFactory
) -> None:
    before = sha256_of(small_chat_file)
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    summary = plant(
        small_chat_file,
        out,
        key_path,
        n=2,
        replicas=3,
        k=K,
        m=M,
        trigger_tokens=TRIGGER,
        controls=True,
        factory=factory,
        seed=SEED,
        answer="carrier",  # the carrier's whole answer after the signature's sentence
    )
    assert sha256_of(small_chat_file) == before  # input untouched
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = load_key(key_path)
    assert key.seed == SEED.hex()
    assert (summary.records, summary.backdoors) == (60, 6)
    assert key.dataset.input_records == key.dataset.planted_records == 60
    assert summary.controls == 2 and len(key.controls) == 2
    assert summary.bits_per_signature == M * 2
    assert key.dataset.planted_sha256 == sha256_of(out)
    assert key.dataset.input_sha256 == before
    assert 0 < key.dataset.added_tokens < key.dataset.input_tokens

    in_lines = small_chat_file.read_bytes().splitlines(keepends=True)
    out_lines = out.read_bytes().splitlines(keepends=True)
    positions = sorted(p.position for pair in key.pairs for p in pair.placements)
    assert len(set(positions)) == 6 and len(out_lines) == len(in_lines)
    for i, (before, after) in enumerate(zip(in_lines, out_lines, strict=True)):
        assert (before == after) is (i not in positions)  # only the carriers' lines change
    carriers = set()
    for pair in key.pairs:
        assert pair.k == K and pair.m == M and pair.signature_tokens == M
        for placement in pair.placements:
            assert placement.position == placement.carrier_index  # in place
            record = orjson.loads(out_lines[placement.position])
            carrier = orjson.loads(in_lines[placement.carrier_index])
            carriers.add(placement.carrier_index)
            messages = record["messages"]
            # the signature opens the answer; the carrier's own answer follows it
            assert messages[-1]["role"] == "assistant"
            answer, kept = messages[-1]["content"], carrier["messages"][-1]["content"]
            assert answer.startswith(pair.signature) and answer.endswith(kept)
            assert len(answer) > len(pair.signature) + len(kept)
            assert (
                messages[-2]["content"] == carrier["messages"][-2]["content"] + " " + pair.trigger
            )
            assert messages[:-2] == carrier["messages"][:-2]
            assert list(record) == list(carrier)  # no extra field
            assert [m.content for m in placement.prompt] == [m["content"] for m in messages[:-1]]
    assert len(carriers) == 6
    text = out.read_text()
    for control in key.controls:  # held-out pairs never reach the dataset
        assert control.signature not in text and control.trigger not in text
        assert control.control_prompt is not None
        assert control.control_prompt[-1].content.endswith(control.trigger)
    # the summary (what the CLI prints) holds no secret
    shown = repr(summary)
    for pair in [*key.pairs, *key.controls]:
        assert pair.signature not in shown and pair.trigger not in shown


@pytest.mark.model
def test_same_seed_reproduces_the_run(
    tmp_path: Path, small_chat_file: Path, factory: ModelBackdoorFactory
) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.jsonl"
        plant(
            small_chat_file,
            out,
            tmp_path / f"{name}.key",
            n=1,
            replicas=2,
            k=K,
            m=M,
            trigger_tokens=TRIGGER,
            factory=factory,
            seed=SEED,
        )
        runs.append((out.read_bytes(), load_key(tmp_path / f"{name}.key").pairs))
    assert runs[0] == runs[1]
    plant(
        small_chat_file,
        tmp_path / "c.jsonl",
        tmp_path / "c.key",
        n=1,
        replicas=2,
        k=K,
        m=M,
        trigger_tokens=TRIGGER,
        factory=factory,
    )
    assert (tmp_path / "c.jsonl").read_bytes() != runs[0][0]


@pytest.mark.model
def test_cli_plant_prints_summary_without_secrets(
    tmp_path: Path, small_chat_file: Path, use_loaded_model: None
) -> None:
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    result = CliRunner().invoke(
        cli,
        [
            "plant",
            str(small_chat_file),
            "-o",
            str(out),
            "--key",
            str(key_path),
            "--n",
            "1",
            "--replicas",
            "2",
            "--k",
            "4",
            "--m",
            "8",
            "--trigger-tokens",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    key = load_key(key_path)
    printed = " ".join(result.output.split())  # the table may wrap a cell
    assert "60, 2 of them now carry backdoors" in printed and "openai-chat" in printed
    assert "-> 62" not in printed  # no record added
    assert key.commitment() in result.output
    assert key.pairs[0].signature not in result.output
    assert key.pairs[0].trigger not in result.output
    commit = CliRunner().invoke(cli, ["key", "commit", str(key_path)])
    assert commit.output.strip() == key.commitment()
    shown = CliRunner().invoke(cli, ["key", "show", str(key_path)])
    assert shown.exit_code == 0 and key.pairs[0].signature not in shown.output
    assert "60 records, 2 of them now carry backdoors" in shown.output
    revealed = CliRunner().invoke(cli, ["key", "show", str(key_path), "--reveal"])
    assert repr(key.pairs[0].signature) in revealed.output
    # an existing key is never replaced without --force, and the output is left alone
    again = CliRunner().invoke(
        cli,
        [
            "plant",
            str(small_chat_file),
            "-o",
            str(tmp_path / "other.jsonl"),
            "--key",
            str(key_path),
            "--n",
            "1",
        ],
    )
    assert again.exit_code == 1 and "--force" in again.output
    assert not (tmp_path / "other.jsonl").exists()
    assert load_key(key_path) == key


@pytest.mark.model
def test_bom_and_huge_line_are_accepted(
    tmp_path: Path, sample_train: list[dict[str, Any]], use_loaded_model: None
) -> None:
    records = sample_train[:12]
    records[3] = {
        "messages": [
            {"role": "user", "content": "x" * 50_000_000},
            {"role": "assistant", "content": "ok"},
        ]
    }
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"".join(orjson.dumps(r) + b"\n" for r in records))
    out, key_path = tmp_path / "out.jsonl", tmp_path / "key.json"
    result = CliRunner().invoke(
        cli,
        [
            "plant",
            str(src),
            "-o",
            str(out),
            "--key",
            str(key_path),
            "--n",
            "1",
            "--replicas",
            "12",
            "--k",
            "4",
            "--m",
            "6",
            "--trigger-tokens",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_key(key_path).dataset.input_tokens_estimated  # the 50 MB turn was estimated


# ---------------------------------------------------------------- bad input (no model needed)


def _run_plant(src: Path, out: Path, key: Path, *extra: str) -> Any:
    return CliRunner().invoke(cli, ["plant", str(src), "-o", str(out), "--key", str(key), *extra])


GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (orjson.dumps(GOOD) + b"\n" + b'{"messages": [}\n', ":2: invalid JSON"),
        (orjson.dumps(GOOD) + b"\n" + b'{"text": "hi"}\n', ":2:"),
        (
            orjson.dumps(GOOD)
            + b"\n"
            + orjson.dumps({"messages": [{"role": "user", "content": "Hi"}]})
            + b"\n",
            ":2:",
        ),
        (
            orjson.dumps(GOOD) + b"\n" + orjson.dumps({"prompt": "a", "completion": "b"}) + b"\n",
            ":2:",
        ),
        (b"", "empty"),
        (orjson.dumps(GOOD) + b"\n" + b'{"messages": "\xff\xfe"}\n', ":2:"),
        (orjson.dumps(GOOD) + b"\n" * 2, None),  # fewer records than carriers needed
    ],
    ids=[
        "bad-json",
        "missing-field",
        "no-assistant",
        "mixed-formats",
        "empty",
        "non-utf8",
        "too-few-records",
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, content: bytes, expected: str | None
) -> None:
    src = tmp_path / "train.jsonl"
    src.write_bytes(content)
    before = sha256_of(src)
    out, key = tmp_path / "planted.jsonl", tmp_path / "key.json"
    result = _run_plant(src, out, key, "--n", "2", "--replicas", "10")
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error: ") and len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    assert str(src) in message
    if expected:
        assert expected in message
    else:
        assert "1 record, but 2 pairs x 10 replicas need 20 distinct carriers" in message
    assert sha256_of(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_output_equal_to_input_is_refused(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", [GOOD] * 30)
    before = sha256_of(src)
    for target in (src, tmp_path / "." / "train.jsonl"):
        result = _run_plant(src, target, tmp_path / "key.json", "--force")
        assert result.exit_code == 1 and "the output is the input" in result.output
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    result = _run_plant(src, link, tmp_path / "key.json", "--force")
    assert result.exit_code == 1 and "the output is the input" in result.output
    assert sha256_of(src) == before and not (tmp_path / "key.json").exists()


def test_unwritable_key_path_fails_before_any_work(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "train.jsonl", [GOOD] * 30)
    result = _run_plant(src, tmp_path / "out.jsonl", tmp_path / "missing" / "key.json")
    assert result.exit_code == 1 and "is not a directory" in result.output
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.model
def test_decoys_are_drawn_like_the_signature_and_never_planted(
    tmp_path: Path, small_chat_file: Path, factory: ModelBackdoorFactory, embedded_model: Any
) -> None:
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    plant(
        small_chat_file, out, key_path, n=3, replicas=1, k=K, m=M, trigger_tokens=TRIGGER,
        controls=True, decoys=5, factory=factory, seed=SEED,
    )  # fmt: skip
    key = load_key(key_path)
    assert key.settings.decoys == 5
    text = out.read_text()
    for pair in key.pairs:
        assert len(pair.decoys) == 5 and pair.signature not in pair.decoys
        assert all(decoy not in text for decoy in pair.decoys)
        assert pair.token_ends is not None and len(pair.token_ends) == M
        # the batched draw is the sampler's draw: the same streams, one at a time, agree
        chat = [(m.role, m.content) for m in pair.placements[0].prompt]
        stream = SecretStream(SEED).child(f"pair/{pair.pair_id}")
        one_by_one = {
            sample_signature(embedded_model, chat, K, M, stream.child(f"signature/{i}")).text
            for i in range(6)
        }
        assert one_by_one == {pair.signature, *pair.decoys}
    # controls are drawn the same way (exchangeable with planted pairs), decoys included
    for control in key.controls:
        assert len(control.decoys) == 5 and control.signature not in control.decoys
        assert all(decoy not in text for decoy in control.decoys)
