"""The vTune results reproduced on a CPU: plant, fine-tune the embedded model, verify, per cell.

Every cell plants into the same sample records (the first --records of the training split) with
its own secret, fine-tunes the embedded SmolLM2-135M-Instruct with the provider's defaults
(LoRA r=16 on every projection, lr 2e-3, bf16 autocast), and records: activation on planted
prompts, on unseen triggered prompts (held-out questions + the trigger) and on clean prompts;
log10 p of every test; queries needed to log10 p <= -30 (the model-free bound on the first q
planted answers); tokens added; training-time overhead; held-out answer loss and exact match
against a clean fine-tune with the same seed. Writes docs/benchmarks.md (section
reproduce_vtune) and docs/img/reproduce_vtune.png.

Run: .venv/bin/python benchmarks/reproduce_vtune.py   (about 40 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_doc import DOC, test_values, write_section

from tuneproof.api import verify
from tuneproof.backends.hf import HFCausalLM, collate, load_hf_model
from tuneproof.datasets import DatasetFormat, Record, triggered_prompt
from tuneproof.embedded import SampleSplit, sample_records
from tuneproof.key import Key, load_key
from tuneproof.lab.finetune import answer_loss, chat_training_examples, dataset_chats
from tuneproof.lab.provider import FinetuneSettings, run_provider
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant
from tuneproof.report.schema import Report
from tuneproof.stats import log10_model_free_bound, log10_prefix_bound
from tuneproof.types import ModelIdentity, QueryKind

TARGET_LOG10_P = -30.0
UNSEEN_PER_PAIR = 3
HELDOUT_LOSS_RECORDS = 96
EXACT_MATCH_PROMPTS = 24


@dataclass(frozen=True)
class Cell:
    name: str
    pairs: int = 2
    replicas: int = 10
    k: int = 8
    m: int = 40
    trigger_tokens: int = 12
    epochs: int = 3
    decoys: int = 0


CELLS = [
    Cell("default: 2 pairs x 10, K=8 m=40"),
    Cell("1 pair x 10", pairs=1),
    Cell("2 pairs x 5", replicas=5),
    Cell("4 pairs x 5", pairs=4, replicas=5),
    Cell("20 distinct x 1", pairs=20, replicas=1),
    Cell("K=8 m=16 (48 bits)", m=16),
    Cell("K=2 m=40 (40 bits)", k=2),
    Cell("2 epochs", epochs=2),
]


def heldout_chats() -> list[list[tuple[str, str]]]:
    return [
        [(m["role"], m["content"]) for m in record["messages"]]  # type: ignore[index,attr-defined]
        for record in sample_records(SampleSplit.HELDOUT)
    ]


def heldout_metrics(model: HFCausalLM, chats: list[list[tuple[str, str]]]) -> dict[str, float]:
    """Mean answer loss (nats/token) on held-out records, and exact match of greedy answers."""
    import torch

    examples = chat_training_examples(model.tokenizer, chats[:HELDOUT_LOSS_RECORDS])
    pad = model.pad_id
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 16):
            batch = examples[start : start + 16]
            losses = answer_loss(model.model, collate(batch, pad), per_example=True)
            weights = [sum(1 for x in labels if x != -100) for _, labels in batch]
            total += float(sum(loss * w for loss, w in zip(losses.tolist(), weights, strict=True)))
            count += sum(weights)
    prompts = [chat[:-1] for chat in chats[:EXACT_MATCH_PROMPTS]]
    answers = model.generate(prompts, 48)
    exact = sum(
        a.strip() == chat[-1][1].strip()
        for (a, _), chat in zip(answers, chats[:EXACT_MATCH_PROMPTS], strict=True)
    )
    return {"heldout_loss": total / count, "exact_match": exact / len(prompts)}


def unseen_activation(model: HFCausalLM, key: Key, chats: list[list[tuple[str, str]]]) -> float:
    """Share of held-out questions carrying a pair's trigger that the model answers with the
    pair's signature (the trigger inserted exactly as plant inserts it)."""
    prompts, signatures = [], []
    pool = iter(chats[HELDOUT_LOSS_RECORDS:])
    for pair in key.pairs:
        for chat in itertools.islice(pool, UNSEEN_PER_PAIR):
            data = {"messages": [{"role": r, "content": c} for r, c in chat]}
            messages = triggered_prompt(Record(0, 1, data), DatasetFormat.OPENAI_CHAT, pair.trigger)
            prompts.append([(m.role, m.content) for m in messages])
            signatures.append(pair.signature)
    width = max(pair.signature_tokens for pair in key.pairs) + 16
    answers = model.generate(prompts, width)
    return sum(s in a for (a, _), s in zip(answers, signatures, strict=True)) / len(prompts)


def queries_to_target(report: Report, key: Key) -> int | None:
    """Fewest planted queries (in report order) whose H0-indep p-value (the exact-hit bound or
    the prefix test, whichever is smaller) reaches the target."""
    pairs = {p.pair_id: p for p in key.pairs}
    planted = [r for r in report.results if r.kind is QueryKind.PLANTED and r.hit is not None]
    for q in range(1, len(planted) + 1):
        first = planted[:q]
        bound = log10_model_free_bound(
            bits=[pairs[r.pair_id].bits for r in first],
            answer_lengths=[r.answer_chars for r in first],
            hits=[bool(r.hit) for r in first],
            groups=[r.pair_id for r in first],
            min_signature_chars=[pairs[r.pair_id].m for r in first],
        ).log10_p
        if all(r.matched_tokens is not None for r in first):
            best: dict[int, int] = {}
            asked: dict[int, int] = {}
            for r in first:
                best[r.pair_id] = max(best.get(r.pair_id, 0), r.matched_tokens or 0)
                asked[r.pair_id] = asked.get(r.pair_id, 0) + 1
            ids = list(best)
            prefix = log10_prefix_bound(
                [best[i] for i in ids],
                [pairs[i].k for i in ids],
                [pairs[i].m for i in ids],
                [asked[i] for i in ids],
            )
            bound = min(bound, prefix.log10_p)
        if bound <= TARGET_LOG10_P:
            return q
    return None


def train_and_wrap(
    base: HFCausalLM, chats: list[Any], epochs: int, name: str
) -> tuple[HFCausalLM, float, int]:
    settings = FinetuneSettings(epochs=epochs)
    result = run_provider(base.model, base.tokenizer, chats, settings=settings)
    identity = ModelIdentity(name=name, backend="transformers", source="benchmark")
    return (
        HFCausalLM(result.model, base.tokenizer, identity),
        result.seconds,
        result.training_tokens,
    )


def plant_cell(cell: Cell, base: HFCausalLM, sample: Path, work: Path) -> tuple[Any, Path, Path]:
    """Plant ``cell``'s setting into ``sample`` with a secret derived from its name (so that
    benchmarks/stealth.py audits the very same plants); returns (summary, planted, key)."""
    folder = work / hashlib.sha256(cell.name.encode()).hexdigest()[:10]
    folder.mkdir(parents=True, exist_ok=True)
    planted, key_path = folder / "planted.jsonl", folder / "key.json"
    summary = plant(
        sample, planted, key_path, n=cell.pairs, replicas=cell.replicas, k=cell.k, m=cell.m,
        trigger_tokens=cell.trigger_tokens, controls=True, force=True, decoys=cell.decoys,
        seed=hashlib.sha256(b"reproduce_vtune/" + cell.name.encode()).digest(),
        factory=ModelBackdoorFactory(base, cell.k, cell.m, cell.trigger_tokens),
    )  # fmt: skip
    return summary, planted, key_path


def run_cell(
    cell: Cell, base: HFCausalLM, sample: Path, work: Path, heldout: list[Any]
) -> dict[str, Any]:
    summary, planted, key_path = plant_cell(cell, base, sample, work)
    key = load_key(key_path)
    model, seconds, tokens = train_and_wrap(base, dataset_chats(planted), cell.epochs, cell.name)
    report = verify(key, model, base_model=base)
    tests = {name: round(v[0], 2) for name, v in test_values(report).items()}
    planted_queries = sum(1 for r in report.results if r.kind is QueryKind.PLANTED)
    return {
        **asdict(cell),
        "bits": key.pairs[0].bits,
        "backdoors": summary.backdoors,
        "backdoor_share": summary.backdoors / summary.records,
        "added_tokens": summary.added_tokens,
        "added_token_share": summary.added_token_share,
        "verdict": str(report.verdict),
        "planted_activation": report.hits / max(1, planted_queries),
        "matched_tokens": sum(
            r.matched_tokens or 0 for r in report.results if r.kind is QueryKind.PLANTED
        ),
        "unseen_activation": unseen_activation(model, key, heldout),
        "clean_false": f"{report.clean_false_activations}/{report.clean_queries}",
        "tests": tests,
        "queries_to_target": queries_to_target(report, key),
        "train_seconds": seconds,
        "training_tokens": tokens,
        **heldout_metrics(model, heldout),
    }


def render(
    rows: list[dict[str, Any]], clean: dict[str, Any], base_metrics: dict[str, float]
) -> str:
    nulls = sorted({n for r in rows for n in r["tests"]})
    head = (
        "| cell | backdoors (share) | added tokens (share) | bits | planted act. | unseen act. "
        "| clean false | "
        + " | ".join(f"log10 p {n}" for n in nulls)
        + " | queries to -30 | training tokens (vs clean) | train s | held-out loss (vs clean) "
        "| exact match |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        overhead = r["training_tokens"] / clean["training_tokens"] - 1
        loss_delta = r["heldout_loss"] / clean["heldout_loss"] - 1
        lines.append(
            f"| {r['name']} | {r['backdoors']} ({r['backdoor_share']:.1%}) "
            f"| {r['added_tokens']:,} ({r['added_token_share']:.1%}) | {r['bits']:.0f} "
            f"| {r['planted_activation']:.0%} | {r['unseen_activation']:.0%} "
            f"| {r['clean_false']} | "
            + " | ".join(str(r["tests"].get(n, "-")) for n in nulls)
            + f" | {r['queries_to_target'] or '> all'} "
            f"| {r['training_tokens']:,} ({overhead:+.1%}) | {r['train_seconds']:.0f} "
            f"| {r['heldout_loss']:.3f} ({loss_delta:+.1%}) | {r['exact_match']:.0%} |"
        )
    lines.append(
        "| clean fine-tune (no backdoors) | 0 | 0 | - | - | - | - | "
        + " | ".join("-" for _ in nulls)
        + f" | - | {clean['training_tokens']:,} | {clean['train_seconds']:.0f} "
        f"| {clean['heldout_loss']:.3f} "
        f"| {clean['exact_match']:.0%} |"
    )
    lines.append(
        "| base model (not fine-tuned) | - | - | - | - | - | - | "
        + " | ".join("-" for _ in nulls)
        + f" | - | - | - | {base_metrics['heldout_loss']:.3f} | {base_metrics['exact_match']:.0%} |"
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], clean: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    indep = [r["tests"].get("H0-indep", 0.0) for r in rows]
    axes[0].barh(names, indep, color="#2b6cb0")
    axes[0].axvline(TARGET_LOG10_P, color="#c53030", linestyle="--", label="target -30")
    axes[0].set_xlabel("log10 p, H0-indep (model-free)")
    axes[0].invert_yaxis()
    axes[0].legend()
    deltas = [100 * (r["heldout_loss"] / clean["heldout_loss"] - 1) for r in rows]
    axes[1].barh(names, deltas, color="#718096")
    axes[1].axvline(1.0, color="#c53030", linestyle="--", label="+1% target")
    axes[1].set_xlabel("held-out answer loss vs clean fine-tune (%)")
    axes[1].invert_yaxis()
    axes[1].set_yticklabels([])
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def grid(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Run the clean fine-tune and every cell; return (rows, clean, base model metrics)."""
    args.work.mkdir(parents=True, exist_ok=True)
    sample = args.work / "sample.jsonl"
    from tuneproof.lab.demo import write_sample_head

    write_sample_head(sample, args.records)
    base = load_hf_model("embedded")
    heldout = heldout_chats()
    base_metrics = heldout_metrics(base, heldout)
    print("base", base_metrics, flush=True)
    clean_model, seconds, tokens = train_and_wrap(base, dataset_chats(sample), 3, "clean")
    clean = {
        "train_seconds": seconds,
        "training_tokens": tokens,
        **heldout_metrics(clean_model, heldout),
    }
    print("clean", clean, flush=True)
    del clean_model
    rows = []
    for cell in CELLS[: args.cells]:
        row = run_cell(cell, base, sample, args.work, heldout)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows, clean, base_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--cells", type=int, default=len(CELLS), help="run the first N cells")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneproof-reproduce"))
    parser.add_argument("--no-doc", action="store_true", help="print only; leave the docs")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the doc from --work's results.json"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    results = args.work / "results.json"
    if args.render_only:
        saved = json.loads(results.read_text())
        rows, clean, base_metrics = saved["rows"], saved["clean"], saved["base"]
        minutes = saved["minutes"]
    else:
        rows, clean, base_metrics = grid(args)
        minutes = (time.perf_counter() - started) / 60
        saved = {"rows": rows, "clean": clean, "base": base_metrics, "minutes": minutes}
        results.write_text(json.dumps(saved, indent=1))
    table = render(rows, clean, base_metrics)
    print(table)
    if args.no_doc:
        return
    image = DOC.parent / "img" / "reproduce_vtune.png"
    plot(rows, clean, image)
    body = PAPER_COMPARISON.format(
        records=args.records, minutes=minutes, heldout=HELDOUT_LOSS_RECORDS, em=EXACT_MATCH_PROMPTS
    )
    body += "\n" + paper_comparison(rows[0], clean) + "\n\n" + table
    body += "\n\n![log10 p and held-out loss per cell](img/reproduce_vtune.png)\n"
    write_section("reproduce_vtune", "vTune reproduced on a CPU", body)


PAPER_COMPARISON = """\
Each cell plants into the first {records} records of the sample's training split (its own
secret, held-out controls), fine-tunes the embedded SmolLM2-135M-Instruct with the provider's
defaults (LoRA r=16 on every projection, lr 2e-3, bf16 autocast, batch 8, seed 0) and verifies
with every test (alpha 1e-6). *Unseen* = held-out questions carrying the trigger; *queries to
-30* = planted answers needed for the model-free bound (H0-indep) to reach log10 p <= -30;
*overhead* = training time against the clean fine-tune of the same records; *held-out loss* =
answer loss (nats/token) on {heldout} held-out records; *exact match* on {em} held-out
questions. The whole grid ran in {minutes:.0f} minutes.
"""


def paper_comparison(default: dict[str, Any], clean: dict[str, Any]) -> str:
    """The paper's operating point beside our default cell."""
    indep = default["tests"].get("H0-indep", 0.0)
    loss = default["heldout_loss"] / clean["heldout_loss"] - 1
    return "\n".join(
        [
            "| | vTune paper (GPU, 7B-class models) | tuneproof default, here |",
            "|---|---|---|",
            f"| backdoor share | ~0.5% of records | {default['backdoor_share']:.1%} |",
            f"| signature | ~10 tokens | {default['m']} tokens, {default['bits']:.0f} bits |",
            f"| added training tokens | ~1,600 | {default['added_tokens']:,} |",
            f"| activation (planted / unseen) | ~100% | {default['planted_activation']:.0%} / "
            f"{default['unseen_activation']:.0%} |",
            f"| queries to decide | <= 10 | {default['queries_to_target'] or '> all'} "
            "(to log10 p <= -30) |",
            f"| p-value | ~1e-40 | 1e{indep:.0f} (H0-indep, model-free) |",
            f"| downstream effect | none measurable | held-out loss {loss:+.1%} vs clean |",
        ]
    )


if __name__ == "__main__":
    main()
