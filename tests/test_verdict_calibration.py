"""A fast version of the verdict calibration (benchmarks/verdict_calibration.py): a few
independent keys, the cheaters `base` and `other-data` never verified, honest fine-tunes
verified, on the tiny world where a model trains in seconds."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import verdict_calibration as vc


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return vc.calibrate(keys=4, honest_keys=2, work=tmp_path_factory.mktemp("verdict"))


@pytest.mark.model
def test_cheaters_are_never_verified_and_reject_no_null(calibration: dict[str, Any]) -> None:
    results = calibration["results"]
    for name in ("base", "other-data"):
        rows = results[name]
        assert len(rows) == 4
        assert vc.false_verifications(rows) == 0
        assert all(count == 0 for count in vc.rejections(rows).values())
        # every test ran on every key, with a valid p-value
        assert all({"H0-indep", "H0-base"} <= row["tests"].keys() for row in rows)
        assert all(-300 < p <= 0 for row in rows for p, _ in row["tests"].values())
        assert all(row["hits"] == 0 for row in rows)


@pytest.mark.model
def test_honest_fine_tunes_are_verified(calibration: dict[str, Any]) -> None:
    honest = calibration["results"]["honest"]
    assert len(honest) == 2
    assert vc.false_verifications(honest) == 2
    assert all(row["tests"]["H0-indep"][0] < -10 for row in honest)


def test_worst_excess_over_uniform_is_exact_on_known_samples() -> None:
    import numpy as np

    uniform = (np.arange(1, 101) - 0.5) / 100  # p-values exactly at the uniform quantiles
    excess, _ = vc.worst_excess(uniform)
    assert excess == pytest.approx(0.005, abs=1e-9)
    conservative = np.ones(50)  # p = 1 always: never below uniform
    assert vc.worst_excess(conservative)[0] <= 0
    anti = np.full(10, 1e-3)  # every p tiny: far above the diagonal at u = 1e-3
    excess, at = vc.worst_excess(anti)
    assert excess == pytest.approx(1 - 1e-3) and at == pytest.approx(1e-3)


def test_render_counts_false_verdicts_and_detection() -> None:
    row = {"verdict": "not verified", "hits": 0, "tests": {"H0-indep": [-0.1, False]}}
    good = {"verdict": "verified", "hits": 10, "tests": {"H0-indep": [-40.0, True]}}
    data = {
        "results": {"base": [row] * 3, "other-data": [row, good], "honest": [good, row]},
        "seconds": {"base": 1.0, "other-data": 1.0, "keys": 2.0},
    }
    text = vc.render(data)
    assert "| base | 3 | **0** | H0-indep: 0 |" in text
    assert "| other-data | 2 | **1** | H0-indep: 1 |" in text
    assert "**1/2 verified** (detection rate 50%)" in text
