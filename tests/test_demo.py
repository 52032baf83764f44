"""`tuneproof demo` end to end on a tiny model (the real demo runs the embedded model in
`make demo`; its wall time is measured by benchmarks/demo_time.py, never here)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from trained_models import TINY_LR, smollm2_tokenizer

from tuneproof.embedded import sample_records
from tuneproof.key import load_key
from tuneproof.lab.demo import DemoConfig, ProviderRun, explain, run_demo
from tuneproof.lab.finetune import render_chat, save_model_folder
from tuneproof.lab.provider import FinetuneSettings, subset_indices
from tuneproof.lab.tiny_models import compact_tokenizer, tiny_llama
from tuneproof.types import QueryKind, Verdict

RECORDS = 60


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ProviderRun], str]:
    root = tmp_path_factory.mktemp("demo")
    full = smollm2_tokenizer()
    chats = [
        [(m["role"], m["content"]) for m in r["messages"]]  # type: ignore[index]
        for r in itertools.islice(sample_records(), RECORDS)
    ]
    tokenizer = compact_tokenizer(full, [render_chat(full, c) for c in chats])
    base = save_model_folder(tiny_llama(tokenizer, seed=1), tokenizer, root / "base")
    config = DemoConfig(
        base=str(base),
        records=RECORDS,
        settings=FinetuneSettings(lora=False, lr=TINY_LR, epochs=40),
        # 32 bits: the one pair's exact hits can reach alpha (at K=4 it took H0-base, which
        # no longer decides a greedy verdict)
        plant_options={"n": 1, "replicas": 8, "k": 16, "m": 8, "trigger_tokens": 6},
        subset_fraction=0.5,
    )
    lines: list[str] = []
    shown: list[list[ProviderRun]] = []

    @contextlib.contextmanager
    def no_bars() -> Iterator[Any]:
        yield lambda stage, done, total: None

    out = root / "out"
    runs = run_demo(
        out, echo=lines.append, show_plant=lambda s: None, show_runs=shown.append,
        progress=no_bars, config=config,
    )  # fmt: skip
    assert shown == [runs]
    return out, runs, "\n".join(lines)


@pytest.mark.model
def test_demo_verifies_the_honest_provider_and_catches_the_base_cheater(
    demo_run: tuple[Path, list[ProviderRun], str],
) -> None:
    out, runs, text = demo_run
    by_name = {run.name: run for run in runs}
    assert [run.name for run in runs] == ["honest", "base", "subset"]
    assert by_name["honest"].report.verdict is Verdict.VERIFIED
    assert by_name["honest"].report.hits == 8 and by_name["honest"].backdoors_trained == 8
    assert by_name["base"].report.verdict is Verdict.NOT_VERIFIED
    assert by_name["base"].report.hits == 0 and by_name["base"].records_trained == 0
    for name in ("honest", "base", "subset"):
        report = orjson.loads((out / f"{name}.json").read_bytes())
        assert report["verdict"] == str(by_name[name].report.verdict)
        assert (out / f"{name}.html").read_text().startswith("<!DOCTYPE html>")
    assert "honest: VERIFIED" in text and "base: NOT VERIFIED" in text


@pytest.mark.model
def test_demo_says_how_many_backdoors_the_subset_cheater_kept(
    demo_run: tuple[Path, list[ProviderRun], str],
) -> None:
    out, runs, text = demo_run
    subset = runs[2]
    key = load_key(out / "key.json")
    positions = {p.position for pair in key.pairs for p in pair.placements}
    planted = RECORDS  # backdoors replace their carriers: no record is added
    kept = positions & subset_indices(planted, 0.5, seed=0)
    assert subset.records_trained == round(0.5 * planted)
    assert subset.backdoors_trained == len(kept)
    assert f"held {len(kept)} of the 8 backdoor records" in text
    secrets = [s for pair in key.pairs + key.controls for s in (pair.trigger, pair.signature) if s]
    assert not any(secret in text for secret in secrets)


def test_explain_gives_the_reason_for_each_outcome() -> None:
    class FakeReport:
        def __init__(self, verdict: Verdict, hits: int, results: list[Any] | None = None) -> None:
            self.verdict, self.hits, self.results = verdict, hits, results or []

    def run(name: str, verdict: Verdict, kept: int) -> ProviderRun:
        return ProviderRun(name, None, FakeReport(verdict, kept), 10, 100, kept, 20, 1.0)  # type: ignore[arg-type]

    lines = explain(
        [
            run("honest", Verdict.VERIFIED, 20),
            run("base", Verdict.NOT_VERIFIED, 0),
            run("subset", Verdict.NOT_VERIFIED, 3),
        ]
    )
    assert lines[0].startswith("honest: VERIFIED - trained on all 10 records, it answers 20/20")
    assert lines[1].startswith("base: NOT VERIFIED - the untouched base model never saw")
    assert "held 3 of the 20 backdoor records (15%), too few to learn them" in lines[2]
    learnt = [
        SimpleNamespace(kind=QueryKind.PLANTED, matched_tokens=3, decoy_rank=1),
        SimpleNamespace(kind=QueryKind.PLANTED, matched_tokens=0, decoy_rank=5),
        SimpleNamespace(kind=QueryKind.CONTROL, matched_tokens=None, decoy_rank=None),
    ]
    honest = ProviderRun(
        "honest", None, FakeReport(Verdict.VERIFIED, 0, learnt), 10, 100, 2, 2, 1.0
    )  # type: ignore[arg-type]
    assert explain([honest])[0].endswith(
        "whole secret signatures; starts its answers with 3 signature tokens in all and finds"
        " 1 of 2 true signatures likelier than all decoys."
    )
    caught = explain([run("subset", Verdict.VERIFIED, 12)])[0]
    assert "held 12 of the 20" in caught and "not on every record" in caught
