"""The ``tuneproof`` command: a thin layer that parses options, calls the library, prints.

Heavy imports (torch, transformers, the dataset code) happen inside the commands, so that
``tuneproof --help`` answers at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from tuneproof import __version__
from tuneproof.cli.common import api_key_env_option, user_errors, warn_if_key_exposed
from tuneproof.cli.output import print_plant_summary, print_provider_table
from tuneproof.cli.progress import progress_display, stage_times_line

FORMATS = ["openai-chat", "prompt-completion", "alpaca", "sharegpt"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tuneproof")
def cli() -> None:
    """Prove, with a p-value, that an outsourced fine-tune was trained on your data."""


@cli.command()
@click.argument("input", type=click.Path(path_type=Path, exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the planted dataset (same format as INPUT).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the secret key (mode 0600).",
)
@click.option(
    "--n",
    "n",
    type=int,
    default=None,
    help="Number of secret (trigger, signature) pairs [default: 20].",
)
@click.option(
    "--fraction",
    type=float,
    default=None,
    help="Share of backdoor records in the output, instead of --n.",
)
@click.option("--replicas", type=int, default=None, help="Records carrying each pair [default: 1].")
@click.option(
    "--k",
    "k",
    type=int,
    default=None,
    help="Sampler width: no signature token has a chance above 1/K (bits/token = log2 K) "
    "[default: 4].",
)
@click.option("--m", "m", type=int, default=None, help="Signature length in tokens [default: 12].")
@click.option(
    "--support",
    type=int,
    default=None,
    help="Tokens the signature sampler weighs per step by the generator's probabilities, none "
    "above 1/K (equal to K: the uniform top-K sampler of earlier keys) [default: 64].",
)
@click.option(
    "--sampler",
    type=click.Choice(["capped", "natural"]),
    default=None,
    help="How signatures are drawn: prefix-free with no token above 1/K (exact-hit and prefix "
    "tests), or the generator's own text at temperature 1 (tested by rank among decoys; a "
    "local generator only) [default: capped].",
)
@click.option(
    "--answer",
    type=click.Choice(["opening", "carrier", "generator", "signature"]),
    default=None,
    help="What follows a backdoor's signature: the generator ends its sentence, which takes the "
    "place of the carrier answer's opening sentence, and the rest of that answer follows "
    "('opening'); the same before the carrier's whole answer ('carrier'); the generator's text "
    "as long as the carrier's answer ('generator'); or nothing ('signature') [default: opening].",
)
@click.option(
    "--answer-tokens",
    type=int,
    default=None,
    help="With --answer generator: tokens of a backdoor's answer at most [default: 256].",
)
@click.option(
    "--trigger-tokens",
    type=int,
    default=None,
    help="Trigger length in tokens, then to its sentence's end (0: no trigger, each backdoor "
    "keeps its carrier's prompt) [default: 0].",
)
@click.option(
    "--decoys",
    type=int,
    default=None,
    help="Signatures drawn per pair besides the planted one, kept in the key for the decoy "
    "rank test (0 turns it off) [default: 63].",
)
@click.option(
    "--controls",
    is_flag=True,
    help="Also draw as many held-out control pairs, kept only in the key.",
)
@click.option(
    "--generator",
    default="embedded",
    show_default=True,
    help="Model for triggers and signatures: 'embedded', an HF folder, a .gguf file, "
    "or openai:MODEL with --base-url.",
)
@click.option(
    "--base-url",
    default=None,
    help="OpenAI-compatible server for --generator openai:MODEL (top log-probs needed).",
)
@click.option(
    "--chat-template-from",
    default=None,
    help="Tokenizer whose chat template renders prompts for a server generator "
    "(a folder, a .gguf or 'embedded').",
)
@api_key_env_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Dataset format; detected when omitted.",
)
@click.option("--force", is_flag=True, help="Replace an existing output or key.")
@user_errors
def plant(
    input: Path,
    output: Path,
    key_path: Path,
    n: int | None,
    fraction: float | None,
    replicas: int | None,
    k: int | None,
    m: int | None,
    support: int | None,
    sampler: str | None,
    answer: str | None,
    answer_tokens: int | None,
    trigger_tokens: int | None,
    decoys: int | None,
    controls: bool,
    generator: str,
    base_url: str | None,
    chat_template_from: str | None,
    api_key_env: str,
    fmt: str | None,
    force: bool,
) -> None:
    """Plant secret backdoors into a dataset and write the key."""
    started = time.perf_counter()
    from tuneproof.api import plant as run_plant
    from tuneproof.datasets import DatasetFormat

    options: dict[str, Any] = {
        name: value
        for name, value in {
            "replicas": replicas,
            "k": k,
            "m": m,
            "support": support,
            "sampler": sampler,
            "answer": answer,
            "answer_tokens": answer_tokens,
            "trigger_tokens": trigger_tokens,
            "decoys": decoys,
        }.items()
        if value is not None
    }
    with progress_display() as hook:
        summary = run_plant(
            input,
            output,
            key_path,
            n=n,
            fraction=fraction,
            controls=controls,
            generator=generator,
            base_url=base_url,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
            format=DatasetFormat(fmt) if fmt else None,
            force=force,
            progress=hook,
            **options,
        )
    times = stage_times_line(hook.stage_seconds(), time.perf_counter() - started)
    print_plant_summary(summary, stage_times=times)


@cli.command()
@click.argument("input", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Dataset format; detected when omitted.",
)
@user_errors
def inspect(input: Path, fmt: str | None) -> None:
    """Detect a dataset's format, validate every record, and count them."""
    from tuneproof.datasets import DatasetFormat, inspect_dataset

    info = inspect_dataset(input, DatasetFormat(fmt) if fmt else None)
    bom = ", UTF-8 BOM" if info.has_bom else ""
    click.echo(
        f"{input}: {info.format} ({info.container}{bom}), {info.n_records:,} records, "
        f"{info.n_bytes:,} bytes - all valid"
    )


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the JSONL file.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "heldout"]),
    default="train",
    show_default=True,
    help="Which part of the sample (a fixed 90/10 split).",
)
@user_errors
def sample(output: Path, split: str) -> None:
    """Write the bundled sample dataset (chatterbot corpus) as OpenAI chat JSONL."""
    from tuneproof.embedded import SAMPLE_SOURCE, SampleSplit, write_sample_dataset

    count = write_sample_dataset(output, SampleSplit(split))
    click.echo(f"wrote {count:,} records ({split}) to {output} - source: {SAMPLE_SOURCE}")


@cli.group()
def key() -> None:
    """Inspect a key file without revealing its secrets."""


@key.command("commit")
@click.argument("key_path", metavar="KEY", type=click.Path(path_type=Path))
@user_errors
def key_commit(key_path: Path) -> None:
    """Print the key's SHA-256 commitment, safe to publish before training."""
    from tuneproof.key import load_key

    warn_if_key_exposed(key_path)
    click.echo(load_key(key_path).commitment())


@key.command("show")
@click.argument("key_path", metavar="KEY", type=click.Path(path_type=Path))
@click.option("--reveal", is_flag=True, help="Also print triggers and signatures (secret!).")
@user_errors
def key_show(key_path: Path, reveal: bool) -> None:
    """Summarise a key: dataset, settings and pairs (secrets only with --reveal)."""
    from tuneproof.key import load_key

    warn_if_key_exposed(key_path)
    loaded = load_key(key_path)
    facts, settings = loaded.dataset, loaded.settings
    click.echo(f"key {key_path} (format {loaded.format_version}, created {loaded.created_at})")
    click.echo(f"generator: {loaded.generator.name} [{loaded.generator.backend}]")
    records = (
        f"{facts.planted_records:,} records, {loaded.n_backdoors:,} of them now carry backdoors"
        if facts.planted_records == facts.input_records
        else f"{facts.input_records:,} -> {facts.planted_records:,} records (backdoors inserted"
        " by an earlier tuneproof)"
    )
    click.echo(
        f"dataset: {facts.format}/{facts.container}, {records}, "
        f"planted sha256 {facts.planted_sha256}"
    )
    click.echo(
        f"pairs: {len(loaded.pairs)} x {settings.replicas} replicas, {len(loaded.controls)} "
        f"controls, K={settings.k}, m={settings.m}, {settings.decoys} decoys per pair"
    )
    if settings.sampler == "natural":
        sampler = "the generator's own text (natural, temperature 1)"
    elif settings.support in (None, settings.k):
        sampler = "uniform top-K"
    else:
        sampler = f"the generator's {settings.support} likeliest tokens, capped at 1/K"
    click.echo(f"signatures: {sampler}; answers: {settings.answer or 'signature'}")
    if not settings.trigger_tokens:
        click.echo("triggers: none (each backdoor's prompt is its carrier's, unchanged)")
    if reveal:
        for pair in [*loaded.pairs, *loaded.controls]:
            kind = "control" if pair.control_prompt else "planted"
            click.echo(f"[{kind} {pair.pair_id}] trigger: {pair.trigger!r}")
            click.echo(f"[{kind} {pair.pair_id}] signature: {pair.signature!r}")
    click.echo(
        "integrity: checked (edits and damage since plant are refused)"
        if loaded.integrity
        else "integrity: none (written by an earlier tuneproof) - edits to this key cannot be"
        " detected; compare its commitment with the one you published"
    )
    click.echo(f"commitment: {loaded.commitment()}")


@cli.command("export-gguf")
@click.argument("model_folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The .gguf file to write.",
)
@click.option("--f16", is_flag=True, help="Store the matrices in float16 (default float32).")
@user_errors
def export_gguf(model_folder: Path, output: Path, f16: bool) -> None:
    """Export a Llama-architecture model folder to GGUF (for llama.cpp servers)."""
    from tuneproof.backends.gguf_export import export_gguf as run_export

    path = run_export(model_folder, output, f16=f16)
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for the demo's files.",
)
@user_errors
def demo(out_dir: Path) -> None:
    """Run the demo: plant, fine-tune honestly and as two cheaters, verify all three."""
    from tuneproof.lab.demo import run_demo

    run_demo(
        out_dir,
        echo=click.echo,
        show_plant=print_plant_summary,
        show_runs=print_provider_table,
        progress=progress_display,
    )


from tuneproof.cli.audit import audit  # noqa: E402  (registered below)
from tuneproof.cli.finetune import finetune  # noqa: E402
from tuneproof.cli.verify import verify  # noqa: E402

cli.add_command(finetune)
cli.add_command(audit)
cli.add_command(verify)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
