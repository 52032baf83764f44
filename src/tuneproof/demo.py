"""The demo on the embedded model and the bundled sample data (offline).

Builds the sample dataset, plants backdoors with held-out controls, then plays the laziest
cheating provider — one who returns the base model untouched — and verifies it: the verdict must
be "not verified". The honest local fine-tune and the other cheaters join when the local
provider lands (`tuneproof finetune`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from tuneproof.embedded import SampleSplit, write_sample_dataset
from tuneproof.planting import PlantSummary, ProgressHook, plant
from tuneproof.report import Report


def run_demo(
    out_dir: Path,
    *,
    echo: Callable[[str], None],
    show_plant: Callable[[PlantSummary], None],
    show_report: Callable[[Report], None],
    progress: Callable[[], AbstractContextManager[ProgressHook]],
) -> Report:
    """Write the sample to ``out_dir``, plant into it, verify the untouched embedded model.

    Returns the verification report. Files: ``sample.jsonl``, ``planted.jsonl``, ``key.json``
    (0600), ``base.json`` and ``base.html`` (the report on the base-model cheater).
    """
    from tuneproof.models.hf import load_hf_model
    from tuneproof.planting import (
        DEFAULT_K,
        DEFAULT_M,
        DEFAULT_TRIGGER_TOKENS,
        ModelBackdoorFactory,
    )
    from tuneproof.report import write_html, write_json
    from tuneproof.verification import verify

    out_dir.mkdir(parents=True, exist_ok=True)
    sample = out_dir / "sample.jsonl"
    count = write_sample_dataset(sample, SampleSplit.TRAIN)
    echo(f"[1/3] wrote the sample dataset: {count:,} chat records -> {sample}")
    echo("[2/3] planting backdoors with the embedded SmolLM2-135M-Instruct (loads in ~20 s)")
    model = load_hf_model("embedded")
    factory = ModelBackdoorFactory(model, DEFAULT_K, DEFAULT_M, DEFAULT_TRIGGER_TOKENS)
    with progress() as hook:
        summary = plant(
            sample,
            out_dir / "planted.jsonl",
            out_dir / "key.json",
            controls=True,
            force=True,
            factory=factory,
            progress=hook,
        )
    show_plant(summary)
    echo(
        "[3/3] a cheating provider returns the base model untouched: verifying it "
        "(H0-base uses the same model's log-probs)"
    )
    report = verify(out_dir / "key.json", model, base_model=model)
    write_json(report, out_dir / "base.json")
    write_html(report, out_dir / "base.html")
    show_report(report)
    echo(
        f"Reports: {out_dir / 'base.json'}, {out_dir / 'base.html'}. The base model never saw "
        "the key, so no test rejects its null: the cheater is caught."
    )
    return report
