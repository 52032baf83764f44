"""The demo on the embedded model and the bundled sample data (offline), what `make demo` runs.

Builds the sample dataset, plants backdoors with held-out controls, then plays three local
providers — one honest LoRA fine-tune and two cheaters (``base``: the model returned untouched;
``subset:0.3``: trained on a random 30% of the records) — verifies each, prints them side by
side and writes one JSON and one HTML report per provider.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tuneproof.atomic import atomic_output
from tuneproof.embedded import EMBEDDED_NAME, sample_records
from tuneproof.lab.cheats import Cheat
from tuneproof.lab.provider import FinetuneSettings
from tuneproof.planting.planter import PlantSummary
from tuneproof.report.schema import Report
from tuneproof.report.wording import verdict_headline
from tuneproof.types import Progress, QueryKind, Verdict

DEMO_RECORDS = 200
"""Sample records the demo plants into: a few hundred, so that three providers and three
verifications take minutes on two CPU cores (the measured times: docs/benchmarks.md, demo wall
time)."""
SUBSET_FRACTION = 0.3


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on; the defaults are the embedded model and the default plant."""

    base: str = EMBEDDED_NAME
    records: int = DEMO_RECORDS
    settings: FinetuneSettings = field(default_factory=FinetuneSettings)
    plant_options: dict[str, Any] = field(default_factory=dict)
    subset_fraction: float = SUBSET_FRACTION


@dataclass(frozen=True)
class ProviderRun:
    """One provider of the demo and the verification of what it returned."""

    name: str
    cheat: str | None
    report: Report
    records_trained: int
    training_tokens: int
    backdoors_trained: int
    backdoors_planted: int
    seconds: float


def write_sample_head(path: Path, records: int) -> int:
    """The first ``records`` records of the sample's training split as OpenAI chat JSONL
    (atomically); returns how many were written."""
    count = 0
    with atomic_output(path) as handle:
        for record in itertools.islice(sample_records(), records):
            handle.write(orjson.dumps(record) + b"\n")
            count += 1
    return count


def run_demo(
    out_dir: Path,
    *,
    echo: Callable[[str], None],
    show_plant: Callable[[PlantSummary], None],
    show_runs: Callable[[list[ProviderRun]], None],
    progress: Callable[[], AbstractContextManager[Progress]],
    config: DemoConfig | None = None,
) -> list[ProviderRun]:
    """Run the demo into ``out_dir``; return the three provider runs (honest, base, subset).

    Files: ``sample.jsonl``, ``planted.jsonl``, ``key.json`` (0600), and for each provider
    ``NAME.json`` and ``NAME.html`` (NAME = honest, base, subset).
    """
    from tuneproof.api import plant, verify
    from tuneproof.backends.hf import HFCausalLM, as_generator, load_hf_model
    from tuneproof.config import PlantConfig
    from tuneproof.key import load_key
    from tuneproof.lab.finetune import dataset_chats
    from tuneproof.lab.provider import backdoor_positions, run_provider
    from tuneproof.planting.factory import ModelBackdoorFactory
    from tuneproof.report.files import write_html, write_json
    from tuneproof.types import ModelIdentity

    config = config or DemoConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    sample, planted, key_path = (out_dir / n for n in ("sample.jsonl", "planted.jsonl", "key.json"))
    count = write_sample_head(sample, config.records)
    echo(f"[1/5] wrote {count:,} sample chat records -> {sample}")
    echo(f"[2/5] loading {config.base} and planting backdoors with held-out controls")
    base = load_hf_model(config.base)
    settings = PlantConfig(controls=True, force=True, **config.plant_options)
    # the base draws the backdoors (a bfloat16 copy where that is fast, freed after planting)
    generator = as_generator(base)
    factory = ModelBackdoorFactory.from_config(generator, settings)
    with progress() as hook:
        summary = plant(sample, planted, key_path, config=settings, factory=factory, progress=hook)
    generator.release_caches()  # the base itself where no bfloat16 copy was made
    del factory, generator
    show_plant(summary)
    key = load_key(key_path)
    chats = dataset_chats(planted)
    positions = backdoor_positions(key)
    providers = [
        ("honest", None, "an honest provider fine-tunes on every record"),
        ("base", Cheat("base"), "a cheater returns the base model untouched"),
        (
            "subset",
            Cheat("subset", fraction=config.subset_fraction),
            f"a cheater trains on a random {config.subset_fraction:.0%} of the records",
        ),
    ]
    runs: list[ProviderRun] = []
    for step, (name, cheat, what) in enumerate(providers, start=3):
        echo(f"[{step}/5] {what}, then tuneproof verifies what it returned")
        start = time.perf_counter()
        with progress() as hook:

            def on_step(
                done: int, total: int, _loss: float, stage: str = f"training {name}"
            ) -> None:
                hook(stage, done, total)

            result = run_provider(
                base.model, base.tokenizer, chats, settings=config.settings, cheat=cheat,
                progress=on_step,
            )  # fmt: skip
        picked = set(result.trained_indices or ())
        model = HFCausalLM(
            result.model,
            base.tokenizer,
            ModelIdentity(
                name=f"{name} provider's model", backend="transformers", source=str(out_dir)
            ),
        )
        with progress() as hook:
            report = verify(key, model, base_model=base, progress=hook)
        write_json(report, out_dir / f"{name}.json")
        write_html(report, out_dir / f"{name}.html")
        runs.append(
            ProviderRun(
                name=name,
                cheat=result.cheat,
                report=report,
                records_trained=result.records_trained,
                training_tokens=result.training_tokens,
                backdoors_trained=len(positions.intersection(picked)),
                backdoors_planted=len(positions),
                seconds=time.perf_counter() - start,
            )
        )
        # the returned model is verified and reported: free it before the next provider trains,
        # so that at most one fine-tuned copy of the base is alive at a time
        del result, model
        gc.collect()
    show_runs(runs)
    for line in explain(runs):
        echo(line)
    echo(f"Reports: {', '.join(str(out_dir / f'{r.name}.json') for r in runs)} (and .html)")
    return runs


def explain(runs: list[ProviderRun]) -> list[str]:
    """Plain-words lines on what happened to each provider, and why."""
    lines = []
    for run in runs:
        verdict = run.report.verdict
        if run.name == "honest":
            lines.append(
                f"honest: {verdict_headline(verdict)} - trained on all {run.records_trained:,} "
                f"records, it answers {run.report.hits}/{run.backdoors_planted} planted "
                f"prompts with their whole secret signatures{learnt_phrase(run.report)}."
            )
        elif run.name == "base":
            lines.append(
                f"base: {verdict_headline(verdict)} - the untouched base model never saw a "
                "backdoor, so no test can reject its null."
            )
        else:
            share = run.backdoors_trained / max(1, run.backdoors_planted)
            why = (
                "enough to learn the signatures: a positive verdict proves training on the "
                "planted records, not on every record. A cheater training on a fraction F "
                "keeps each backdoor with probability F; more pairs with fewer replicas make "
                "a partial cheater likelier to miss some."
                if verdict is Verdict.VERIFIED
                else "too few to learn them: the partial cheater is caught."
            )
            lines.append(
                f"subset: {verdict_headline(verdict)} - its random {run.records_trained:,} records "
                f"held {run.backdoors_trained} of the {run.backdoors_planted} backdoor records "
                f"({share:.0%}), {why}"
            )
    return lines


def learnt_phrase(report: Report) -> str:
    """What partial learning the report shows: signature tokens matched at the start of the
    answers, and true signatures ranked first among their decoys (empty when neither ran)."""
    planted = [r for r in report.results if r.kind is QueryKind.PLANTED]
    parts = []
    matched = [r.matched_tokens for r in planted if r.matched_tokens is not None]
    if matched:
        parts.append(f"starts its answers with {sum(matched)} signature tokens in all")
    ranks = [r.decoy_rank for r in planted if r.decoy_rank is not None]
    if ranks:
        first = sum(1 for r in ranks if r == 1)
        parts.append(f"finds {first} of {len(ranks)} true signatures likelier than all decoys")
    return "; " + " and ".join(parts) if parts else ""
