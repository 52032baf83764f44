"""The stealth side of the trade-off: how easily a provider finds the backdoors, per plant setting.

For each setting (K, m, replicas per signature, trigger length, number of backdoors) this plants
into the same sample records as benchmarks/reproduce_vtune.py (same seeds, so the same plants)
and runs every `tuneproof audit` detector: AUROC, backdoors surviving top-Q filtering, and the
cost of the cheapest cheater. Where reproduce_vtune.py trained the same setting, its activation
and queries-to-log10 p <= -30 are shown beside (its results.json). Writes docs/stealth.md's
table section (between the markers) and nothing else.

Run: .venv/bin/python benchmarks/stealth.py   (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_vtune import CELLS, Cell, plant_cell
from results_doc import machine_line

from tuneproof.audit import audit
from tuneproof.backends.hf import load_hf_model

DOC = Path(__file__).resolve().parent.parent / "docs" / "stealth.md"
REPRODUCE_RESULTS = Path("/tmp/tuneproof-reproduce/results.json")


# reproduce_vtune.py's cells (same names, same seeds: the same plants), then more stealth-side
# settings that were not trained
SETTINGS = [
    *CELLS[:-1],  # its last cell differs only in epochs: the same plant as the first
    Cell("10 distinct x 1", pairs=10, replicas=1),
    Cell("20 distinct x 1, m=16", pairs=20, replicas=1, m=16),
    Cell("20 distinct x 1, m=16, 6-tok triggers", pairs=20, replicas=1, m=16, trigger_tokens=6),
    Cell("2 pairs x 10, 24-token triggers", trigger_tokens=24),
    # candidates for the new defaults, each planted with three secrets (AUROC varies by plant)
    *(
        Cell(
            f"20 distinct x 1, m={m}, {t}-tok triggers{tag}",
            pairs=20,
            replicas=1,
            m=m,
            trigger_tokens=t,
        )
        for m, t in ((12, 6), (16, 6))
        for tag in ("", " #2", " #3")
        if (m, t, tag) != (16, 6, "")  # that plant is the row above
    ),
]


def learnability() -> dict[str, dict[str, Any]]:
    if not REPRODUCE_RESULTS.exists():
        return {}
    return {row["name"]: row for row in json.loads(REPRODUCE_RESULTS.read_text())["rows"]}


def run(setting: Cell, base: Any, sample: Path, work: Path) -> dict[str, Any]:
    summary, planted, key = plant_cell(setting, base, sample, work)
    report = audit(planted, key, reference_model=base)
    detectors = {d.name: d for d in report.detectors}
    best = max(report.detectors, key=lambda d: d.auroc)
    return {
        **asdict(setting),
        "backdoors": summary.backdoors,
        "share": summary.backdoors / summary.records,
        "bits": setting.m * math.log2(setting.k),
        "auroc": {name: d.auroc for name, d in detectors.items()},
        "best_detector": best.name,
        "best_auroc": best.auroc,
        "survivors_best": best.survivors,
        "cheater_share": report.best_cheater_share,
        "cheater_detector": report.best_cheater_detector,
    }


def render(rows: list[dict[str, Any]], learnt: dict[str, dict[str, Any]]) -> str:
    names = ["repeated", "length", "format", "perplexity", "relevance", "combined"]
    head = (
        "| setting | backdoors (share) | bits | "
        + " | ".join(f"AUROC {n}" for n in names)
        + " | left after top 1/5/10% (best detector) | cheapest cheater trains on "
        "| planted act. | H0-indep log10 p | queries to -30 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [
            f"**{r['auroc'][n]:.2f}**" if n == r["best_detector"] else f"{r['auroc'][n]:.2f}"
            for n in names
        ]
        s = r["survivors_best"]
        trained = learnt.get(r["name"])
        learn = (
            f"{trained['planted_activation']:.0%} | {trained['tests'].get('H0-indep', '-')} | "
            f"{trained['queries_to_target'] or '> all'}"
            if trained
            else "not trained | - | -"
        )
        lines.append(
            f"| {r['name']} | {r['backdoors']} ({r['share']:.1%}) | {r['bits']:.0f} | "
            + " | ".join(cells)
            + f" | {s['0.01']}/{s['0.05']}/{s['0.1']} of {r['backdoors']} | "
            f"{r['cheater_share']:.1%} ({r['cheater_detector']}) | {learn} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneproof-stealth"))
    args = parser.parse_args()
    from tuneproof.lab.demo import write_sample_head

    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    sample = args.work / "sample.jsonl"
    write_sample_head(sample, args.records)
    base = load_hf_model("embedded")
    rows = []
    for setting in SETTINGS:
        rows.append(run(setting, base, sample, args.work))
        print(json.dumps(rows[-1]), flush=True)
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    table = render(rows, learnability())
    print(table)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = (
        f"<!-- BEGIN stealth-table -->\n*Machine:* {machine_line()}  \n*Date:* {stamp}  \n"
        f"*Script:* `benchmarks/stealth.py` ({(time.perf_counter() - start) / 60:.0f} min)\n\n"
        f"{table}\n<!-- END stealth-table -->"
    )
    text = DOC.read_text()
    pattern = re.compile(r"<!-- BEGIN stealth-table -->.*?<!-- END stealth-table -->", re.S)
    DOC.write_text(pattern.sub(lambda _: block, text))


if __name__ == "__main__":
    main()
