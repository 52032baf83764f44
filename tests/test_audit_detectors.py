"""The audit's detector registry and its 'extension' and 'naturalness' detectors, on real
sample records."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tuneproof.audit import AuditInput, detector_scores, read_audit_records
from tuneproof.audit.duplicates import extension_scores, normalise_prompt, prefix_scores
from tuneproof.audit.naturalness import last_user_turn, naturalness_scores, tail_contrast
from tuneproof.audit.registry import (
    DETECTORS,
    DetectorSpec,
    default_detectors,
    detector_spec,
)
from tuneproof.audit.scoring import auroc
from tuneproof.datasets.chat import append_trigger
from tuneproof.embedded import SampleSplit, sample_records
from tuneproof.errors import TuneproofError

Chat = list[tuple[str, str]]


def chat_of(record: dict[str, Any]) -> Chat:
    return [(m["role"], m["content"]) for m in record["messages"]]


@pytest.fixture(scope="module")
def train_chats() -> list[Chat]:
    return [chat_of(r) for r in itertools.islice(sample_records(), 300)]


@pytest.fixture(scope="module")
def heldout_chats() -> list[Chat]:
    return [chat_of(r) for r in itertools.islice(sample_records(SampleSplit.HELDOUT), 40)]


def prompts_and_answers(chats: list[Chat]) -> tuple[list[list[str]], list[str]]:
    return [[t for r, t in c[:-1] if r != "system"] for c in chats], [c[-1][1] for c in chats]


# --- the registry ----------------------------------------------------------------------------


def test_unknown_detector_names_the_choices() -> None:
    with pytest.raises(TuneproofError, match="unknown detector 'smell'") as error:
        detector_spec("smell")
    assert all(name in str(error.value) for name in DETECTORS)


def test_every_default_detector_is_registered_and_the_new_ones_sit_before_learned() -> None:
    names = list(DETECTORS)
    assert set(default_detectors()) <= set(names)
    assert names.index("relevance") < names.index("extension") < names.index("naturalness")
    assert names.index("naturalness") < names.index("learned")
    for name in default_detectors():
        spec = detector_spec(name)
        assert spec.name == name and spec.description and ":" in spec.target
    assert detector_spec("naturalness").uses_model and not detector_spec("extension").uses_model
    # every built-in detector but the learned one (another module's) loads as a function
    assert all(callable(detector_spec(n).load()) for n in names if n != "learned")


def test_importing_the_audit_imports_no_detector_module() -> None:
    """Detectors load lazily: the registry names them, ``spec.load()`` imports them."""
    code = (
        "import sys, tuneproof.audit, tuneproof.cli.audit\n"
        "heavy = [m for m in ('tuneproof.audit.duplicates', 'tuneproof.audit.naturalness', "
        "'tuneproof.audit.model_detectors', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from tuneproof.audit.registry import detector_spec\n"
        "detector_spec('extension').load()\n"
        "assert 'tuneproof.audit.duplicates' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_detector_whose_module_is_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, train_chats: list[Chat]
) -> None:
    ghost = DetectorSpec("ghost", "not written yet", "tuneproof.audit.no_such_module:ghost")
    monkeypatch.setitem(DETECTORS, "ghost", ghost)
    inp = AuditInput(None, [], train_chats[:3])
    with pytest.raises(TuneproofError, match="the 'ghost' detector cannot be loaded"):
        detector_scores(inp, ["ghost"])
    wrong = DetectorSpec("wrong", "a function that is not there", "tuneproof.audit.scoring:nope")
    monkeypatch.setitem(DETECTORS, "wrong", wrong)
    with pytest.raises(TuneproofError, match=r"'wrong' detector cannot be loaded.*has no nope"):
        wrong.load()


# --- extension -------------------------------------------------------------------------------


def test_prefix_links_ignore_new_turns_and_split_common_openings() -> None:
    extension, original, _ = prefix_scores(
        ["a b c d", "a b c d e f", "a b c d | g", "x y", "x y z", "x y w", "x yz"]
    )
    # the one extension of "a b c d": confidence 4/5, shared 4/6
    assert extension[1] == pytest.approx(0.5 + 0.5 * (4 / 5) * (1 + 4 / 6) / 2)
    assert extension[2] == 0.0  # a new turn is how conversations grow
    assert original[0] == extension[1]
    # "x y" is extended twice: each extension's share is halved; "x yz" is no word extension
    assert extension[4] == extension[5] == pytest.approx(0.5 + 0.5 * (2 / 3) * (1 + 2 / 3) / 4)
    assert extension[6] == 0.0 and extension[3] == 0.0


def test_copies_with_appended_text_score_highest_and_their_originals_next(
    train_chats: list[Chat], heldout_chats: list[Chat]
) -> None:
    """Ten records (of prompts found once in the file) copied with a held-out sentence
    appended to the last user turn (and a new answer): the copies come first, their originals
    above the rest of the file."""
    prompts = [normalise_prompt(p) for p in prompts_and_answers(train_chats)[0]]
    unique = [i for i, p in enumerate(prompts) if prompts.count(p) == 1]
    rng = np.random.default_rng(1)
    sources = [int(i) for i in rng.choice(unique, 10, replace=False)]
    copies = []
    for n, i in enumerate(sources):
        *prompt, _ = train_chats[i]
        extra = heldout_chats[n][-1][1].split(".")[0] + "."
        role, text = prompt[-1]
        copies.append([*prompt[:-1], (role, append_trigger(text, extra)), heldout_chats[-n][-1]])
    chats = train_chats + copies
    scores = extension_scores(*prompts_and_answers(chats))
    labels = [False] * len(train_chats) + [True] * len(copies)
    assert auroc(scores, labels) > 0.97
    original = np.zeros(len(chats), bool)
    original[sources] = True
    # the sample has its own extensions ("hello" / "hello there"...) and their originals
    assert auroc(scores[: len(train_chats)], original[: len(train_chats)]) > 0.75
    assert np.all(scores[sources] > np.median(scores[: len(train_chats)]))
    assert np.all(scores[len(train_chats) :] > scores[sources])  # each copy above its original


def test_light_edits_of_long_prompts_are_near_duplicates(train_chats: list[Chat]) -> None:
    """Long prompts (sample answers used as questions) copied with one word changed in the
    middle: MinHash LSH pairs each copy with its original."""
    long = [c for c in train_chats if len(c[-1][1].split()) >= 25][:40]
    chats = [[("user", c[-1][1]), ("assistant", "Thanks.")] for c in long]
    edited = []
    for c in chats[:8]:
        words = c[0][1].split()
        words[len(words) // 2] = "zebra"
        edited.append([("user", " ".join(words)), ("assistant", "Noted, thanks.")])
    scores = extension_scores(*prompts_and_answers(chats + edited))
    labels = [i < 8 for i in range(len(chats))] + [True] * len(edited)
    assert auroc(scores, labels) > 0.95
    assert min(scores[len(chats) :]) > 0.3  # half weight of a Jaccard estimate near 0.8


def test_natural_data_without_copies_is_blind_and_duplicates_score_zero(
    train_chats: list[Chat], heldout_chats: list[Chat]
) -> None:
    """Held-out records mixed in as 'backdoors': AUROC ~ 0.5. Exact duplicate prompts (with
    their answers) add no suspicion to each other."""
    chats = train_chats + heldout_chats
    labels = [False] * len(train_chats) + [True] * len(heldout_chats)
    assert abs(auroc(extension_scores(*prompts_and_answers(chats)), labels) - 0.5) < 0.15
    twice = extension_scores(*prompts_and_answers(heldout_chats + heldout_chats))
    once = extension_scores(*prompts_and_answers(heldout_chats))
    assert np.allclose(twice[: len(heldout_chats)], once)


def test_extension_runs_on_a_real_plant(tmp_path: Path, embedded_model: Any) -> None:
    """A plant of the embedded generator (whatever the planter does with carriers): the
    extension detector reads the planted file and scores every record."""
    from tuneproof.api import plant
    from tuneproof.key import load_key
    from tuneproof.planting.factory import ModelBackdoorFactory

    clean = tmp_path / "train.jsonl"
    clean.write_text(
        "".join(__import__("json").dumps(r) + "\n" for r in itertools.islice(sample_records(), 60))
    )
    planted, key = tmp_path / "planted.jsonl", tmp_path / "key.json"
    plant(
        clean, planted, key, n=4, replicas=1, k=8, m=8, trigger_tokens=6, controls=False,
        decoys=0, seed=bytes(range(32)), factory=ModelBackdoorFactory(embedded_model, 8, 8, 6),
    )  # fmt: skip
    records, chats = read_audit_records(planted)
    scores = detector_scores(AuditInput(planted, records, chats), ["extension"])["extension"]
    positions = load_key(key).backdoor_positions()
    assert scores.shape == (len(records),) and np.all((scores >= 0) & (scores <= 1))
    assert len(positions) == 4 and all(0 <= p < len(records) for p in positions)


# --- naturalness -----------------------------------------------------------------------------


def test_tail_contrast_compares_the_end_with_the_beginning() -> None:
    assert tail_contrast(np.array([4.0] * 14 + [1.0] * 12)) == pytest.approx(3.0)
    assert tail_contrast(np.array([4.0, 4.0, 4.0, 1.0, 1.0, 1.0])) == pytest.approx(3.0)
    assert tail_contrast(np.array([1.0, 1.0, 5.0, 5.0, 5.0])) == 0.0  # 2 | 3: too short
    assert tail_contrast(np.array([2.0] * 30)) == 0.0
    assert last_user_turn([("system", "s"), ("user", "q"), ("assistant", "a")]) == "q"
    assert last_user_turn([("system", "s"), ("assistant", "a")]) == ""


def test_turns_ending_with_a_model_continuation_score_higher(
    embedded_model: Any, train_chats: list[Chat]
) -> None:
    """A trigger drawn as the planter draws it (the embedded model's nucleus continuation of
    the user turn, trimmed to a sentence end) appended to every other turn: those score above
    the untouched ones on average, under the same model as reference."""
    from tuneproof.planting.secret import SecretStream
    from tuneproof.planting.triggers import sample_trigger

    chats, labels = [], []
    for i, chat in enumerate(train_chats[:32]):
        *prompt, answer = chat
        role, text = prompt[-1]
        stream = SecretStream(bytes(32), b"%d" % i)
        trigger = sample_trigger(embedded_model, text, 6, stream) if i % 2 else ""
        if trigger:
            prompt[-1] = (role, append_trigger(text, trigger))
        chats.append([*prompt, answer])
        labels.append(bool(i % 2 and trigger))
    scores = naturalness_scores(chats, embedded_model)
    assert sum(labels) >= 12
    assert np.mean(scores[np.array(labels)]) > np.mean(scores[~np.array(labels)]) + 0.5
    assert auroc(scores, labels) > 0.7
    short = naturalness_scores([[("user", "Hi"), ("assistant", "Hello")]], embedded_model)
    assert short.tolist() == [0.0]
