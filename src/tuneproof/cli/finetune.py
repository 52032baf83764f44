"""``tuneproof finetune``: the local provider, honest or cheating (see tuneproof.lab.provider)."""

from __future__ import annotations

from pathlib import Path

import click

from tuneproof.cli.common import console, user_errors
from tuneproof.cli.progress import progress_display


@click.command()
@click.argument("data", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--base",
    default="embedded",
    show_default=True,
    help="Base model: 'embedded' (SmolLM2-135M-Instruct), an HF model folder or a .gguf file.",
)
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Model folder to write (must not exist).",
)
@click.option(
    "--lora/--full",
    default=True,
    show_default=True,
    help="Train rank-16 LoRA adapters on every projection (merged on save), or every weight.",
)
@click.option("--epochs", type=int, default=3, show_default=True, help="Passes over the data.")
@click.option(
    "--lr", type=float, default=None, help="Learning rate [default: 2e-3 LoRA, 1e-4 full]."
)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Records per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffling/cheat seed.")
@click.option(
    "--bf16/--fp32",
    "bf16",
    default=None,
    help="bfloat16 autocast [default: on when the CPU/GPU supports it natively].",
)
@click.option(
    "--cheat",
    default=None,
    metavar="MODE",
    help="Play a dishonest provider: base, perturb, subset:F, backdoors-only (needs --key), "
    "other-data:PATH, detect-and-train:Q, detect-and-drop:Q, continue:PATH (docs/provider.md).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="The plant's key, read only by --cheat backdoors-only.",
)
@click.option(
    "--detectors",
    default=None,
    metavar="NAMES",
    help="With detect-and-train or detect-and-drop: the comma-separated audit detectors the "
    "cheater combines (see tuneproof audit --help) [default: all of audit's defaults].",
)
@user_errors
def finetune(
    data: Path,
    base: str,
    out_dir: Path,
    lora: bool,
    epochs: int,
    lr: float | None,
    batch_size: int,
    seed: int,
    bf16: bool | None,
    cheat: str | None,
    key_path: Path | None,
    detectors: str | None,
) -> None:
    """Fine-tune a local model on a dataset file, honestly or as a cheating provider."""
    from tuneproof.errors import TuneproofError
    from tuneproof.lab.provider import Cheat, FinetuneSettings
    from tuneproof.lab.provider import finetune as run_finetune

    if epochs < 1 or batch_size < 1 or (lr is not None and lr <= 0):
        raise TuneproofError("--epochs and --batch-size must be at least 1 and --lr positive")
    parsed = Cheat.parse(cheat) if cheat else None
    settings = FinetuneSettings(
        lora=lora, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, bf16=bf16
    )
    err = console(stderr=True)
    err.print(f"loading {base} and {data} ...")
    with progress_display(transient=False) as display:
        folder, result = run_finetune(
            data,
            base,
            out_dir,
            settings=settings,
            cheat=parsed,
            key=key_path,
            detectors=[d.strip() for d in detectors.split(",") if d.strip()] if detectors else None,
            progress=display.training(),
        )
    what = f"cheat {result.cheat}" if result.cheat else "honest"
    console().print(
        f"{what}: trained on {result.records_trained:,} of {result.records_offered:,} records "
        f"({result.training_tokens:,} tokens, {result.seconds:.0f} s on {result.device}"
        f"{', bf16' if result.bf16 else ''}) -> {folder}"
    )
