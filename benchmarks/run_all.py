"""Run every benchmark, one after another (never two at once: they share two cores), each
writing its own section of docs/benchmarks.md. About 1.5 hours on two cores.

Run: make bench   or   .venv/bin/python benchmarks/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# cheap first; the long ones (about 7, 40 and 10 minutes) last
BENCHMARKS = [
    "calibration",
    "sampler_naturalness",
    "model_load",
    "generation_batching",
    "http_overhead",
    "plant_throughput",
    "plant_speed",
    "verify_speed",
    "demo_time",
    "verdict_calibration",
    "reproduce_vtune",
    "stealth",  # reads reproduce_vtune's results for the learnability columns
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args()
    failed = []
    for name in args.only or BENCHMARKS:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
