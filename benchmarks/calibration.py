"""Calibration of the p-values: simulate each test's null many times, count false positives.

Writes the section "calibration" of docs/benchmarks.md. Usage:
    .venv/bin/python benchmarks/calibration.py [--trials 400000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

from results_doc import write_section

from tuneproof.lab.calibration import markdown_table, rows, run_calibration

NOTES = """\
Each row simulates the null hypothesis of one test many times and counts how often p <= alpha
(a false positive). A valid p-value has a rate <= alpha; "ok" means the count is not
significantly above alpha (one-sided binomial test at 1e-3). The tests are discrete, so their
exact size (the largest attainable p-value <= alpha) is often well below alpha; where the null
distribution of the p-value is known exactly the table gives that size, and the observed rate
should agree with it. The scenarios (`tuneproof/lab/calibration.py`):

- **H0-base**: hits drawn as Bernoulli(p_i), the base model sampling its answers.
- **H0-indep, worst case**: signatures uniform over the K^m strings of length m, answers are
  windows of a de Bruijn sequence, so each window of L characters holds L - m + 1 distinct
  candidates and the bound (with `min_signature_chars = m`) is attained exactly.
- **H0-indep, real sampler**: signatures from `tuneproof.planting.sampler.sample_prefix_free` and
the
  secret stream over a prefix-related synthetic vocabulary; answers stitched from random paths
  of the public candidate tree. The bound is loose here (a hit needs a whole candidate, most
  start positions hold none), so the rate is far below alpha.
- **H0-controls**: a random half of the pairs is planted, hit probabilities differ between
  pairs but not between halves (Fisher exact); exchangeable scores with ties (exact
  permutation) or continuous (Monte-Carlo, B = 999, whose p-value is exactly uniform on
  {1..1000}/1000); Fisher's method over independent uniform or discrete p-values.
- **Negative control**: the model-free bound computed with the *drawn* signature's length as
  `min_signature_chars`, which is not a valid bound (docs/statistics.md). The harness must flag
  it, and does.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=400_000, help="trials of the cheap scenarios")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    table = rows(run_calibration(trials=args.trials, seed=args.seed))
    elapsed = time.perf_counter() - start
    body = (
        f"{NOTES}\n{markdown_table(table)}\n\n"
        f"{args.trials:,} trials for the cheap scenarios (fewer for the real sampler and "
        f"Monte-Carlo rows), seed {args.seed}, {elapsed:.0f} s.\n"
    )
    write_section("calibration", "Calibration of the p-values", body)
    print(markdown_table(table))
    bad = [r for r in table if r.consistent() != r.scenario.valid or not r.matches_exact_size()]
    if bad:
        raise SystemExit(f"{len(bad)} row(s) miscalibrated - see docs/benchmarks.md")


if __name__ == "__main__":
    main()
