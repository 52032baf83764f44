"""The rest of a backdoor's answer (tuneproof.planting.continuation) and the three answer
shapes of a plant: the carrier's answer kept after the signature (the default), the generator's
text, or the signature alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
from stats_reference import nucleus_reference

from tuneproof.api import plant
from tuneproof.backends.base import TokenVocabulary
from tuneproof.config import PlantConfig
from tuneproof.key import load_key
from tuneproof.planting.continuation import (
    SENTENCE_SLACK,
    ContinuationRequest,
    draw_continuations,
    nucleus_pick,
    split_opening,
    trim_to_sentence,
)
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.secret import SecretStream

SEED = bytes(range(32))


class TinyModel:
    """Four tokens: ' a', ' b', '.', and a special end token; fixed next-token log-probs."""

    def __init__(self, logprobs: Sequence[float]) -> None:
        self.vocabulary = TokenVocabulary((b" a", b" b", b".", b"<end>"), frozenset({3}))
        self._row = np.array(logprobs, dtype=np.float32)

    def next_token_logprobs(self, context: Sequence[int]) -> npt.NDArray[np.float32]:
        return self._row


def request(budget: int, seed: int = 0) -> ContinuationRequest:
    return ContinuationRequest([0], budget, SecretStream(bytes([seed]) * 32))


def test_trim_to_sentence() -> None:
    assert trim_to_sentence("One. Two is cut") == "One."
    assert trim_to_sentence("First line\nsecond is cut") == "First line"
    assert trim_to_sentence("no boundary at all ") == "no boundary at all"
    assert trim_to_sentence("Done!") == "Done!"


def test_nucleus_pick_against_a_direct_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        logprobs = rng.normal(size=20) * rng.choice([0.5, 3.0])
        top_p, u = float(rng.uniform(0.5, 1.0)), float(rng.uniform())
        expected = nucleus_reference(list(logprobs), top_p, u)
        assert nucleus_pick(logprobs, top_p, u) == expected
    with_inf = np.array([-np.inf, 0.0, -np.inf])
    assert all(nucleus_pick(with_inf, 0.95, u) == 1 for u in (0.0, 0.5, 0.999))


def test_an_end_token_closes_the_answer_at_once() -> None:
    model = TinyModel([-50.0, -50.0, -50.0, 0.0])
    assert draw_continuations(model, [request(10)]) == [""]


def test_the_budget_and_the_sentence_slack() -> None:
    # never a sentence end nor an end token: runs the budget and the slack, kept whole
    words = TinyModel([0.0, 0.0, -np.inf, -np.inf])
    (text,) = draw_continuations(words, [request(5)])
    assert len(text.split()) == 5 + SENTENCE_SLACK
    # a sentence end is likely: past the budget the text stops at its first one
    ends = TinyModel([0.0, 0.0, 0.0, -np.inf])
    for seed in range(20):
        (text,) = draw_continuations(ends, [request(4, seed)])
        assert text.endswith(".") or text.count(" ") >= 4
        assert len(text.replace(".", " .").split()) <= 4 + SENTENCE_SLACK
    # budget 0 (the 'carrier' answer): only the sentence is finished
    (short,) = draw_continuations(ends, [request(0, 3)])
    assert short == "" or short.endswith(".")


def test_rows_are_drawn_by_their_own_streams() -> None:
    model = TinyModel([0.0, 0.0, -1.0, -3.0])
    together = draw_continuations(model, [request(8, 1), request(3, 2), request(0, 3)])
    alone = [draw_continuations(model, [request(b, s)])[0] for b, s in ((8, 1), (3, 2), (0, 3))]
    assert together == alone


def test_split_opening() -> None:
    """The opening sentence an 'opening' answer replaces: prose only, never code, a list, a
    heading or a number; a sentence end is one before the end or a non-lower-case word."""
    assert split_opening("Sure! Here is the code:\n\n```py\nx\n```") == (
        "Sure!", " Here is the code:\n\n```py\nx\n```"
    )  # fmt: skip
    assert split_opening("  The answer is 4.") == ("The answer is 4.", "")
    assert split_opening("Use e.g. a map. Then fold.") == ("Use e.g. a map.", " Then fold.")
    assert split_opening("Steps:\n1. Boil") == ("Steps:", "\n1. Boil")
    for answer in ("```py\nx = 1\n```", "1. First", "# Title\nText", "- item", "", "No end",
                   "Ends on a line\nbreak.", "x" * 300 + "."):  # fmt: skip
        assert split_opening(answer) is None, answer


@pytest.mark.parametrize("answer", ["opening", "generator", "signature"])  # 'carrier': elsewhere
def test_the_other_answer_shapes(
    answer: str, small_chat_file: Path, tmp_path: Path, embedded_model: Any
) -> None:
    config = PlantConfig(n=2, decoys=0, seed=SEED, answer=answer, answer_tokens=40)
    out, key_path = tmp_path / "planted.jsonl", tmp_path / "key.json"
    factory = ModelBackdoorFactory.from_config(embedded_model, config)
    plant(small_chat_file, out, key_path, config=config, factory=factory)
    key = load_key(key_path)
    assert key.settings.answer == answer and key.settings.support == config.support
    lines = out.read_bytes().splitlines()
    originals = small_chat_file.read_bytes().splitlines()
    for pair in key.pairs:
        for placement in pair.placements:
            text = orjson.loads(lines[placement.position])["messages"][-1]["content"]
            kept = orjson.loads(originals[placement.carrier_index])["messages"][-1]["content"]
            assert text.startswith(pair.signature)
            if answer == "signature":
                assert text == pair.signature
            elif answer == "opening":
                split = split_opening(kept)
                rest = kept if split is None else split[1]  # no prose opening: all of it kept
                assert text.endswith(rest) and len(text) >= len(pair.signature) + len(rest)
            else:
                assert kept not in text and len(text) > len(pair.signature)
                assert len(embedded_model.text_ids(text)) <= 40 + SENTENCE_SLACK + 2
