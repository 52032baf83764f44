"""The local provider (`tuneproof finetune`): honest training and every cheat, on a tiny model
whose training takes seconds, verified with the real verification code."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from click.testing import CliRunner
from trained_models import TINY_LR, TrainedPairs, tiny_tokenizer_for, write_sample

from tuneproof.api import verify
from tuneproof.backends.hf import load_hf_model
from tuneproof.cli.main import cli
from tuneproof.embedded import SampleSplit, sample_records
from tuneproof.errors import TuneproofError
from tuneproof.lab.finetune import (
    answer_loss,
    chat_training_examples,
    collate,
    dataset_chats,
    save_model_folder,
)
from tuneproof.lab.provider import (
    MANIFEST_NAME,
    Cheat,
    backdoor_positions,
    choose_chats,
    perturb_weights,
    relative_update,
)
from tuneproof.lab.tiny_models import tiny_llama
from tuneproof.types import Verdict


@pytest.fixture(scope="module")
def untrained(trained_pairs: TrainedPairs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny Llama with the planted file's compact tokenizer: the
    provider's base model (a full fine-tune teaches it the data in seconds)."""
    tokenizer = tiny_tokenizer_for(trained_pairs.planted)
    folder = tmp_path_factory.mktemp("provider") / "base"
    return save_model_folder(tiny_llama(tokenizer, seed=3), tokenizer, folder)


def run_finetune(planted: Path, base: Path, out: Path, *extra: str) -> Any:
    args = ["finetune", str(planted), "--base", str(base), "-o", str(out), "--full"]
    args += ["--lr", str(TINY_LR), "--epochs", "40", *extra]
    return CliRunner().invoke(cli, args)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_hf_model(str(folder)).model.state_dict().items()}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base", Cheat("base")),
        ("perturb", Cheat("perturb")),
        ("backdoors-only", Cheat("backdoors-only")),
        ("subset:0.3", Cheat("subset", fraction=0.3)),
    ],
)
def test_cheat_modes_parse(text: str, expected: Cheat) -> None:
    assert Cheat.parse(text) == expected and str(expected) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subset:0", "0 < F < 1"),
        ("subset:1.5", "0 < F < 1"),
        ("subset:half", "0 < F < 1"),
        ("subset", "unknown cheat"),
        ("base:1", "unknown cheat"),
        ("lazy", "unknown cheat 'lazy' - use one of: base, perturb, subset:F"),
        ("other-data:/no/such/file.jsonl", "/no/such/file.jsonl does not exist"),
    ],
)
def test_bad_cheat_modes_are_refused_with_the_accepted_forms(text: str, message: str) -> None:
    with pytest.raises(TuneproofError, match=message.replace("(", r"\(")):
        Cheat.parse(text)


def test_cheats_choose_what_they_train_on(trained_pairs: TrainedPairs, tmp_path: Path) -> None:
    chats = dataset_chats(trained_pairs.planted)
    assert choose_chats(chats, None) == chats
    assert choose_chats(chats, Cheat("base")) == [] == choose_chats(chats, Cheat("perturb"))
    subset = choose_chats(chats, Cheat("subset", fraction=0.3), seed=4)
    assert len(subset) == round(0.3 * len(chats))
    assert subset == choose_chats(chats, Cheat("subset", fraction=0.3), seed=4)
    assert subset != choose_chats(chats, Cheat("subset", fraction=0.3), seed=5)
    assert all(chat in chats for chat in subset)
    positions = backdoor_positions(trained_pairs.key)
    assert len(positions) == 10
    oracle = choose_chats(chats, Cheat("backdoors-only"), backdoors=positions)
    triggers = [pair.trigger for pair in trained_pairs.key.pairs]
    assert len(oracle) == 10
    assert all(any(t in chat[-2].content for t in triggers) for chat in oracle)
    with pytest.raises(TuneproofError, match="pass --key"):
        choose_chats(chats, Cheat("backdoors-only"))
    with pytest.raises(TuneproofError, match="planted file of that key"):
        choose_chats(chats[:5], Cheat("backdoors-only"), backdoors=positions)
    other = write_sample(tmp_path / "other.jsonl", n=7)
    assert len(choose_chats(chats, Cheat("other-data", path=other))) == 7


def test_perturb_adds_noise_of_the_requested_relative_size(untrained: Path) -> None:
    model = load_hf_model(str(untrained)).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perturb_weights(model, 0.02, seed=1)
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.endswith("proj.weight") for k in moved)
    ratios = [float((after[k] - before[k]).norm() / before[k].norm()) for k in moved]
    assert ratios == pytest.approx([0.02] * len(moved), rel=1e-4)
    assert relative_update(_Holder(before), _Holder(dict(after))) == pytest.approx(
        sorted(ratios), rel=1e-6
    )


class _Holder:
    """A stand-in exposing ``state_dict()`` for relative_update (it reads nothing else)."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state


@pytest.mark.model
def test_honest_provider_is_verified_and_its_manifest_keeps_the_secrets(
    trained_pairs: TrainedPairs, untrained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "honest"
    result = run_finetune(trained_pairs.planted, untrained, out)
    assert result.exit_code == 0, result.output
    assert "honest: trained on 60 of 60 records" in result.output
    manifest = orjson.loads((out / MANIFEST_NAME).read_bytes())
    assert manifest["cheat"] is None and manifest["records_trained"] == 60
    assert manifest["settings"]["lora"] is False and manifest["settings"]["epochs"] == 40
    text = (out / MANIFEST_NAME).read_text() + result.output
    for pair in [*trained_pairs.key.pairs, *trained_pairs.key.controls]:
        assert pair.trigger not in text and pair.signature not in text
    report = verify(trained_pairs.key, str(out))
    assert report.verdict is Verdict.VERIFIED and report.hits == 10


@pytest.mark.model
def test_base_cheater_returns_the_base_weights_and_is_not_verified(
    trained_pairs: TrainedPairs, untrained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "base"
    result = run_finetune(trained_pairs.planted, untrained, out, "--cheat", "base")
    assert result.exit_code == 0, result.output
    assert "cheat base: trained on 0 of 60 records" in result.output
    before, after = weights(untrained), weights(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    report = verify(trained_pairs.key, str(out), base_model=str(untrained))
    assert report.verdict is Verdict.NOT_VERIFIED and report.hits == 0


@pytest.mark.model
def test_oracle_cheater_trained_on_the_backdoors_alone_passes(
    trained_pairs: TrainedPairs, untrained: Path, tmp_path: Path
) -> None:
    """What detection could buy a provider: the key's records alone are enough to pass. The
    stealth audit exists because of this."""
    out = tmp_path / "oracle"
    refused = run_finetune(trained_pairs.planted, untrained, out, "--cheat", "backdoors-only")
    assert refused.exit_code == 1 and "pass --key" in refused.output and not out.exists()
    result = run_finetune(
        trained_pairs.planted, untrained, out, "--cheat", "backdoors-only",
        "--key", str(trained_pairs.key_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orjson.loads((out / MANIFEST_NAME).read_bytes())["records_trained"] == 10
    assert verify(trained_pairs.key, str(out)).verdict is Verdict.VERIFIED


def test_finetune_errors_name_the_problem_and_write_nothing(
    trained_pairs: TrainedPairs, untrained: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "exists"
    existing.mkdir()
    result = run_finetune(trained_pairs.planted, untrained, existing)
    assert result.exit_code == 1 and "already exists" in result.output
    out = tmp_path / "out"
    result = run_finetune(trained_pairs.planted, untrained, out, "--cheat", "subset:2")
    assert result.exit_code == 1 and "0 < F < 1" in result.output and not out.exists()
    result = run_finetune(trained_pairs.planted, tmp_path / "nope", out)
    assert result.exit_code != 0 and "not found" in result.output and not out.exists()
    bad = tmp_path / "bad.jsonl"
    lines = list(itertools.islice(trained_pairs.planted.open(), 3))
    bad.write_text("".join(lines) + '{"messages": [}\n')
    result = run_finetune(bad, untrained, out)
    assert result.exit_code != 0 and "bad.jsonl:4: invalid JSON" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("detect-and-train:10", Cheat("detect-and-train", fraction=0.1)),
        ("detect-and-drop:2.5", Cheat("detect-and-drop", fraction=0.025)),
    ],
)
def test_detecting_cheats_parse_a_percentage(text: str, expected: Cheat) -> None:
    assert Cheat.parse(text) == expected and str(expected) == text
    with pytest.raises(TuneproofError, match="0 < Q < 100"):
        Cheat.parse(text.split(":")[0] + ":100")


def test_detecting_cheats_train_on_the_top_or_the_rest(trained_pairs: TrainedPairs) -> None:
    chats = dataset_chats(trained_pairs.planted)
    suspicion = [float(i % 7) for i in range(len(chats))]  # 6 is the top score, 8 records
    top = choose_chats(chats, Cheat("detect-and-train", fraction=0.1), suspicion=suspicion)
    rest = choose_chats(chats, Cheat("detect-and-drop", fraction=0.1), suspicion=suspicion)
    assert len(top) == 6 and len(rest) == 54  # ceil(0.1 * 60) = 6
    assert top == [chats[i] for i in (6, 13, 20, 27, 34, 41)]  # score 6, earliest first
    assert sorted(map(str, top + rest)) == sorted(map(str, chats))
    with pytest.raises(TuneproofError, match="suspicion score per record"):
        choose_chats(chats, Cheat("detect-and-train", fraction=0.1))


@pytest.mark.model
def test_detect_and_train_runs_the_audit_detectors_without_the_key(
    trained_pairs: TrainedPairs, untrained: Path, tmp_path: Path
) -> None:
    out = tmp_path / "detect"
    result = run_finetune(
        trained_pairs.planted, untrained, out, "--cheat", "detect-and-train:20",
        "--detectors", "length,extension,perplexity",  # the learned one: test_audit_learned.py
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = orjson.loads((out / MANIFEST_NAME).read_bytes())
    assert manifest["cheat"] == "detect-and-train:20" and manifest["records_trained"] == 12


@pytest.mark.model
def test_continue_trains_on_the_other_data_after_the_planted_file(
    trained_pairs: TrainedPairs, untrained: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.jsonl"  # someone else's data: the sample's held-out records
    held = itertools.islice(sample_records(SampleSplit.HELDOUT), 12)
    other.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in held))
    out = tmp_path / "continued"
    result = run_finetune(trained_pairs.planted, untrained, out, "--cheat", f"continue:{other}")
    assert result.exit_code == 0, result.output
    manifest = orjson.loads((out / MANIFEST_NAME).read_bytes())
    assert manifest["records_trained"] == 60 + 12
    # the second phase really trained: the other data's answers are far likelier than under
    # a model trained on the planted file alone
    examples = chat_training_examples(load_hf_model(str(out)).tokenizer, dataset_chats(other))
    batch = collate(examples, 0)

    def loss(folder: Path) -> float:
        with torch.no_grad():
            return float(answer_loss(load_hf_model(str(folder)).model, batch))

    assert loss(out) < loss(trained_pairs.folder) - 0.5


@pytest.mark.parametrize("lora", [True, False])
def test_training_leaves_the_base_bit_identical_and_the_result_owns_its_weights(
    untrained: Path, trained_pairs: TrainedPairs, lora: bool
) -> None:
    from tuneproof.lab.provider import FinetuneSettings, run_provider

    base = load_hf_model(str(untrained))
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    chats = dataset_chats(trained_pairs.planted)[:16]
    settings = FinetuneSettings(lora=lora, epochs=1, lr=1e-2)
    result = run_provider(base.model, base.tokenizer, chats, settings=settings)
    assert all(torch.equal(before[k], v) for k, v in base.model.state_dict().items())
    assert all(p.requires_grad for p in base.model.parameters())
    trained = result.model.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    shared = {p.data_ptr() for p in base.model.parameters()}
    assert not any(p.data_ptr() in shared for p in result.model.parameters())
