"""The calibration harness at small size: every test's false-positive rate is <= alpha within
sampling error, and the negative control (an invalid bound) is caught."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tuneproof.lab.calibration import (
    CalibrationRow,
    Scenario,
    de_bruijn,
    markdown_table,
    rows,
    run_calibration,
)
from tuneproof.stats.pvalues import Null


@pytest.fixture(scope="module")
def table() -> list[CalibrationRow]:
    return rows(run_calibration(trials=20_000, seed=1))


def test_every_valid_test_is_calibrated(table: list[CalibrationRow]) -> None:
    valid = [row for row in table if row.scenario.valid]
    assert len(valid) == 18
    for row in valid:
        assert row.consistent(), (row.scenario.description, row.alpha, row.false_positives)


def test_rates_match_the_exact_size_where_known(table: list[CalibrationRow]) -> None:
    # sharper than "<= alpha": where the null distribution of the p-value is known exactly
    # (H0-base, the bound's worst case, Monte-Carlo permutation, uniform inputs to Fisher's
    # method) the observed rate must agree with it, so a conservative bug would show too
    known = [row for row in table if row.exact_size is not None]
    assert len(known) == 10
    for row in known:
        assert row.exact_size is not None and row.exact_size <= row.alpha
        assert row.matches_exact_size(), (row.scenario.description, row.alpha, row.rate)


def test_the_negative_control_is_flagged(table: list[CalibrationRow]) -> None:
    invalid = [row for row in table if not row.scenario.valid]
    assert invalid and not any(row.consistent() for row in invalid)


def test_tight_scenarios_reach_alpha(table: list[CalibrationRow]) -> None:
    # where the p-value is continuous (uniform inputs) the rate must be close to alpha, not far
    # below it: the harness would otherwise be too weak to see a small excess
    tight = [row for row in table if "uniform" in row.scenario.description and row.alpha == 1e-2]
    assert tight and all(0.5 * row.alpha < row.rate < 1.5 * row.alpha for row in tight)


def test_table_and_intervals() -> None:
    scenario = Scenario("t", Null.BASE, "demo", np.log10(np.linspace(1e-4, 1, 10_000)))
    (row,) = rows([scenario], alphas=[1e-2])
    low, high = row.interval()
    assert low < row.rate < high
    assert row.rate == pytest.approx(1e-2, rel=0.02)
    text = markdown_table([row])
    assert "| `t` | H0-base | demo | 10,000 | 0.01 |" in text and "ok" in text


def test_de_bruijn_contains_every_string_once() -> None:
    seq = de_bruijn("abcd", 4)
    windows = [seq[i : i + 4] for i in range(len(seq) - 3)]
    assert len(windows) == 256 == len(set(windows))


def test_stats_never_imports_torch() -> None:
    code = (
        "import sys, tuneproof.stats, tuneproof.lab.calibration; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
