"""The end-to-end demo on the embedded model and the bundled sample data (offline).

Today it builds the sample dataset and plants backdoors with held-out controls; verification
and the local fine-tuning provider join it as they land.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from tuneproof.embedded import SampleSplit, write_sample_dataset
from tuneproof.planting import PlantSummary, ProgressHook, plant


def run_demo(
    out_dir: Path,
    *,
    echo: Callable[[str], None],
    show_plant: Callable[[PlantSummary], None],
    progress: Callable[[], AbstractContextManager[ProgressHook]],
) -> PlantSummary:
    """Write the sample to ``out_dir``, plant into it with the embedded model, show the summary.

    Returns the plant summary. Files: ``sample.jsonl``, ``planted.jsonl``, ``key.json`` (0600).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    sample = out_dir / "sample.jsonl"
    count = write_sample_dataset(sample, SampleSplit.TRAIN)
    echo(f"[1/2] wrote the sample dataset: {count:,} chat records -> {sample}")
    echo("[2/2] planting backdoors with the embedded SmolLM2-135M-Instruct (loads in ~20 s)")
    with progress() as hook:
        summary = plant(
            sample,
            out_dir / "planted.jsonl",
            out_dir / "key.json",
            controls=True,
            force=True,
            progress=hook,
        )
    show_plant(summary)
    return summary
