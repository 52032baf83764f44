"""The attacks of issue 6, measured with verification on the embedded model and the default plant.

Plants `tuneproof plant`'s default setting (with controls) into the 200 sample records of
benchmarks/reproduce_vtune.py, then verifies: an honest LoRA fine-tune; the same model
served at temperature 0.7, with a provider system prompt, and int8-quantised; the cheats
detect-and-train:10 and detect-and-drop:10 (the audit's combined detector, without the key);
the oracle backdoors-only (what perfect detection would buy); and continue:HELDOUT (the
honest fine-tune, then the same training on the sample's held-out split). Writes the table
between the `attacks-table` markers of docs/stealth.md.

Run: .venv/bin/python benchmarks/attacks.py   (about 20 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_vtune import Cell, plant_cell
from results_doc import machine_line, test_values

from tuneproof import config as planting
from tuneproof.api import verify
from tuneproof.audit import combined_suspicion
from tuneproof.backends.hf import HFCausalLM, load_hf_model
from tuneproof.embedded import SampleSplit, sample_records
from tuneproof.key import load_key
from tuneproof.lab.cheats import Cheat, backdoor_positions, most_suspicious
from tuneproof.lab.finetune import dataset_chats
from tuneproof.lab.provider import run_provider
from tuneproof.lab.serving import ServedModel, quantized_int8
from tuneproof.types import ModelIdentity

DOC = Path(__file__).resolve().parent.parent / "docs" / "stealth.md"
PROVIDER_SYSTEM_PROMPT = "You are Acme Assistant. Answer helpfully, accurately and briefly."
DEFAULT_PLANT = Cell(
    "plant defaults",
    pairs=planting.DEFAULT_PAIRS,
    replicas=planting.DEFAULT_REPLICAS,
    k=planting.DEFAULT_K,
    m=planting.DEFAULT_M,
    trigger_tokens=planting.DEFAULT_TRIGGER_TOKENS,
    decoys=planting.DEFAULT_DECOYS,
)


def wrap(model: Any, tokenizer: Any, name: str) -> HFCausalLM:
    return HFCausalLM(
        model, tokenizer, ModelIdentity(name=name, backend="transformers", source="-")
    )


def row(name: str, report: Any, trained: str, kept: str) -> dict[str, Any]:
    return {
        "attack": name,
        "verdict": str(report.verdict),
        "hits": f"{report.hits}/{sum(1 for r in report.results if r.kind == 'planted')}",
        "tests": {name: round(v[0], 1) for name, v in test_values(report).items()},
        "trained": trained,
        "backdoors_trained": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneproof-attacks"))
    args = parser.parse_args()
    from tuneproof.lab.demo import write_sample_head

    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    sample = args.work / "sample.jsonl"
    write_sample_head(sample, 200)
    other = args.work / "heldout.jsonl"
    heldout = list(sample_records(SampleSplit.HELDOUT))
    other.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in heldout))
    base = load_hf_model("embedded")
    _, planted, key_path = plant_cell(DEFAULT_PLANT, base, sample, args.work)
    key = load_key(key_path)
    chats = dataset_chats(planted)
    positions = backdoor_positions(key)
    total = len(positions)
    rows = []

    honest = run_provider(base.model, base.tokenizer, chats)
    model = wrap(honest.model, base.tokenizer, "honest")
    rows.append(row("honest (greedy, as returned)", verify(key, model, base_model=base),
                    f"{len(chats)} records", f"{total}/{total}"))  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    served = {
        "served at temperature 0.7": ServedModel(model, temperature=0.7, seed=1),
        "served with a provider system prompt": ServedModel(
            model, system_prompt=PROVIDER_SYSTEM_PROMPT
        ),
        "served int8 (dynamic quantisation)": quantized_int8(model),
    }
    for name, variant in served.items():
        rows.append(row(name, verify(key, variant, base_model=base), "(honest model)", "-"))
        print(json.dumps(rows[-1]), flush=True)

    suspicion = combined_suspicion(planted, reference_model=base)
    top = most_suspicious(suspicion, 0.10)
    for text in ("detect-and-train:10", "detect-and-drop:10"):
        cheat = Cheat.parse(text)
        result = run_provider(base.model, base.tokenizer, chats, cheat=cheat, suspicion=suspicion)
        kept = len(positions & top) if cheat.kind == "detect-and-train" else len(positions - top)
        report = verify(key, wrap(result.model, base.tokenizer, text), base_model=base)
        rows.append(row(text, report, f"{result.records_trained} records", f"{kept}/{total}"))
        print(json.dumps(rows[-1]), flush=True)

    oracle = run_provider(
        base.model, base.tokenizer, chats, cheat=Cheat.parse("backdoors-only"), backdoors=positions
    )
    report = verify(key, wrap(oracle.model, base.tokenizer, "backdoors-only"), base_model=base)
    rows.append(row("backdoors-only (oracle: perfect detection)", report,
                    f"{oracle.records_trained} records", f"{total}/{total}"))  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)

    cheat = Cheat("continue", path=other)
    result = run_provider(base.model, base.tokenizer, chats, cheat=cheat)
    report = verify(key, wrap(result.model, base.tokenizer, "continue"), base_model=base)
    rows.append(row(f"continue: then {len(heldout)} "
                    "held-out records, 3 more epochs", report,
                    f"{result.records_trained} records", f"{total}/{total}"))  # fmt: skip
    print(json.dumps(rows[-1]), flush=True)
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))

    nulls = sorted({n for r in rows for n in r["tests"]})
    lines = [
        "| attack | trained on | backdoors in it | verdict | planted hits | "
        + " | ".join(f"log10 p {n}" for n in nulls)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(nulls),
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['trained']} | {r['backdoors_trained']} | {r['verdict']} | "
            f"{r['hits']} | " + " | ".join(str(r["tests"].get(n, "-")) for n in nulls) + " |"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (
        f"<!-- BEGIN attacks-table -->\n*Machine:* {machine_line()}  \n*Date:* {stamp}  \n"
        f"*Script:* `benchmarks/attacks.py` ({(time.perf_counter() - start) / 60:.0f} min)\n\n"
        + "\n".join(lines)
        + "\n<!-- END attacks-table -->"
    )
    print(block)
    text = DOC.read_text()
    pattern = re.compile(r"<!-- BEGIN attacks-table -->.*?<!-- END attacks-table -->", re.S)
    DOC.write_text(pattern.sub(lambda _: block, text))


if __name__ == "__main__":
    main()
