"""A fast version of the null gauntlet (benchmarks/null_gauntlet.py): a few independent keys,
on the tiny world, against the null providers that break log-likelihoods (NaN weights,
constant scores) and the base itself. None may be verified, and a model whose scores are NaN
or all equal must get the decoy rank test's worst p-value, never its floor."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import null_gauntlet as ng

PROVIDERS = ("base", "nan", "constant")
KEYS = 3
# 5 pairs x 63 decoys: the decoy rank floor 64^-5 = 1e-9 is below every test's share of 1e-6,
# so a rank test fooled by broken scores would verify
WITH_CONTROLS = ng.Setting(k=8, m=8, n=5, replicas=1, decoys=63)
WITHOUT_CONTROLS = ng.Setting(k=8, m=8, n=5, replicas=1, decoys=63, controls=False)


@pytest.fixture(scope="module")
def gauntlet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    runner = ng.Gauntlet(tmp_path_factory.mktemp("null-gauntlet"), providers=PROVIDERS)
    return {
        "controls": runner.run_setting("controls", WITH_CONTROLS, KEYS, honest=0),
        "no-controls": runner.run_setting("no-controls", WITHOUT_CONTROLS, KEYS, honest=0),
    }


@pytest.mark.model
@pytest.mark.parametrize("setting", ["controls", "no-controls"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_null_providers_are_never_verified(
    gauntlet: dict[str, Any], setting: str, provider: str
) -> None:
    rows = gauntlet[setting]["rows"][provider]
    assert len(rows) == KEYS
    assert ng.errors(rows) == []  # a broken model gets a report, not a crash
    assert ng.false_verified(rows, 1e-6) == 0


@pytest.mark.model
@pytest.mark.parametrize("setting", ["controls", "no-controls"])
@pytest.mark.parametrize("provider", ["nan", "constant"])
def test_broken_scores_get_the_worst_decoy_rank(
    gauntlet: dict[str, Any], setting: str, provider: str
) -> None:
    rows = gauntlet[setting]["rows"][provider]
    assert ng.errors(rows) == []
    decoy = ng.log10_pvalues(rows)["decoy rank"]
    assert len(decoy) == KEYS
    assert all(p >= math.log10(0.5) for p in decoy), decoy


def _row(verdict: str, log10_p: float, rejects: bool) -> dict[str, Any]:
    tests = {"decoy rank": [log10_p, rejects, True]}
    return {f"{a:g}": {"verdict": verdict, "hits": 0, "tests": tests} for a in ng.ALPHAS}


def test_per_test_counts_raw_rejections_and_flags_a_broken_test() -> None:
    fine = [_row("not verified", 0.0, False)] * 99 + [_row("not verified", -2.5, False)]
    stats = ng.per_test(fine)["decoy rank"]
    assert (stats["runs"], stats["raw_1e-2"], stats["raw_1e-6"]) == (100, 1, 0)
    assert not stats["raw_flag"] and not stats["excess_flag"]
    broken = [_row("verified", -36.0, True)] * 10
    stats = ng.per_test(broken)["decoy rank"]
    assert stats["raw_1e-6"] == 10 and stats["rejects_1e-06"] == 10
    assert stats["raw_flag"] and stats["excess_flag"]
    assert stats["worst_excess"] == pytest.approx(1.0)


def test_family_names_every_test_of_a_report() -> None:
    methods = {
        "model-free bound: Poisson-binomial tail over b": ("H0-indep", "exact hits"),
        "prefix test: exact tail of the matched bits": ("H0-indep", "prefix"),
        "decoy rank test: exact lower tail": ("H0-indep", "decoy rank"),
        "exact Poisson-binomial tail P[X >= k]": ("H0-base", "H0-base"),
        "one-sided Fisher exact (hypergeometric tail)": ("H0-controls", "Fisher"),
        "exact permutation test over all 6 splits": ("H0-controls", "rank sum"),
    }
    for method, (null, name) in methods.items():
        assert ng.family(null, method) == name


def test_render_shows_false_verdicts_per_provider_and_setting() -> None:
    setting = {"k": 2, "m": 4, "n": 2, "replicas": 1, "decoys": 3, "controls": True}
    rows = {
        "base": [_row("not verified", -0.1, False)] * 3,
        "nan": [_row("verified", -1.2, True)] * 3,
        "honest": [_row("verified", -1.2, True)],
    }
    data = {
        "settings": {"short": {"setting": setting, "keys": 3, "rows": rows, "seconds": {}}},
        "seconds": {"total": 60.0},
        "machine": "test machine",
        "date": "today",
    }
    text = ng.render(data)
    assert "| base | 0 / 0 of 3 |" in text
    assert "| nan | **3 / 3 of 3** |" in text
    assert "| honest | 1 / 1 of 1 |" in text
    assert "| short | 2 | 4 | 4 | 2 x 1 | yes | 3 | 3 |" in text
