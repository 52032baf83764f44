"""The null gauntlet: providers that never saw the key, each trying to break the verdict.

A false "verified" is the worst bug the tool can have. Each null provider below is verified
against many independent keys it never saw (own 256-bit secret each, planted by the real
sampler into the same clean records, with held-out controls and decoys) in the tiny world of
benchmarks/verdict_calibration.py, where a model trains in seconds:

- `base`: the tiny base model, untouched (it is also the generator, so "the generator's greedy
  answer" is this provider);
- `nan`: the base with NaN final-norm weights, a real diverged model: every log-likelihood is
  NaN (and greedy answers are empty);
- `nan-10%`: the base's answers and scores, with 10% of its log-likelihoods NaN at random;
- `constant`: the base's greedy answers, every log-likelihood -5.0;
- `temperature-1`: the base sampling at temperature 1 (fresh samples per key, seeded by the key's
  index, never by its secret), scored by the base;
- `repeat-prompt`: answers with the prompt's last user turn verbatim, scored by the base;
- `other-plant`: the base fine-tuned on another user's plant of the same clean records (same
  settings, its own key);
- `other-data`: the base fine-tuned on the sample's held-out split.

None depends on the key, so every verification is a draw from the null: H0-indep (and
H0-controls) hold exactly, and a valid test gives P[p <= u] <= u for every u. H0-base (the
base model *sampling* its answers) is false for every provider but `temperature-1`: its
rejections are shown, but a verdict must never rest on them. Each key is verified at alpha
1e-6 and at 1e-2 (at 1e-2 a broken test's excess shows within 100 keys). Short settings
(K = 2, m = 4-8, 3 decoys) put the tests' floors near alpha, where discreteness and ties
matter. An honest provider per setting (the base fine-tuned on the key's own planted file)
shows that detection still works.

Run: .venv/bin/python benchmarks/null_gauntlet.py [--keys 100] [--quick] [--render-only]
     (--quick, 3 keys per setting: about 4.7 min alone; --keys 40, 188 keys in all: 87 min with
     other work sharing the 2 cores; --keys 100 would be ~2.5x that)
The test suite runs a few keys of it (tests/test_null_gauntlet.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from null_models import ConstantScores, Memo, PartialNaN, RepeatPrompt, nan_weights
from verdict_calibration import TRIGGER_TOKENS, TinyWorld, worst_excess

from tuneproof.api import verify
from tuneproof.key import load_key
from tuneproof.lab.serving import ServedModel
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant
from tuneproof.report.schema import Report
from tuneproof.types import Verdict

ALPHAS = (1e-6, 1e-2)
NULL_PROVIDERS = (
    "base",
    "nan",
    "nan-10%",
    "constant",
    "temperature-1",
    "repeat-prompt",
    "other-plant",
    "other-data",
)
FAMILIES = ("exact hits", "prefix", "decoy rank", "H0-base", "Fisher", "rank sum")
CONSTANT_SCORE = -5.0
NAN_SHARE = 0.1
FLAG_LEVEL = 1e-3  # excesses and raw rejection counts this unlikely under a valid test are flagged
WORK = Path("/tmp/tuneproof-null-gauntlet")


@dataclass(frozen=True)
class Setting:
    """How the keys of one setting are planted (``plant``'s arguments); ``keys`` scales the
    number of keys (a 20-pair key costs ~8x a 2-pair one)."""

    k: int
    m: int
    n: int
    replicas: int
    decoys: int
    controls: bool = True
    keys: float = 1.0

    @property
    def bits(self) -> float:
        return self.m * math.log2(self.k)

    def key_count(self, keys: int) -> int:
        return max(1, round(keys * self.keys))


SETTINGS = {
    # verdict_calibration's plant (its decoys are plant's default 63)
    "calibration": Setting(k=8, m=16, n=2, replicas=5, decoys=63),
    # plant's defaults, with controls; the decoy rank floor 64^-20 is far below alpha
    "defaults": Setting(k=8, m=12, n=20, replicas=1, decoys=63, keys=0.2),
    # plant's defaults as they are (no controls), fewer pairs: the decoy rank test alone
    "no-controls": Setting(k=8, m=12, n=8, replicas=1, decoys=63, controls=False, keys=0.5),
    # short signatures: floors near alpha (decoy rank 4^-n, Fisher 1 / C(2n, n))
    "short-m4": Setting(k=2, m=4, n=6, replicas=1, decoys=3),
    "short-m6": Setting(k=2, m=6, n=4, replicas=2, decoys=3),
    "short-m8": Setting(k=2, m=8, n=3, replicas=3, decoys=3),
}


def key_seed(name: str, index: int) -> bytes:
    return hashlib.sha256(f"null-gauntlet/{name}/{index}".encode()).digest()


def plant_key(world: TinyWorld, setting: Setting, folder: Path, seed: bytes) -> Path:
    """Plant one key with ``setting`` into the world's clean records; returns its folder."""
    assert world.base is not None and world.clean is not None
    folder.mkdir(parents=True, exist_ok=True)
    plant(
        world.clean, folder / "planted.jsonl", folder / "key.json", n=setting.n,
        replicas=setting.replicas, k=setting.k, m=setting.m, trigger_tokens=TRIGGER_TOKENS,
        controls=setting.controls, decoys=setting.decoys, force=True, seed=seed,
        factory=ModelBackdoorFactory(world.base, setting.k, setting.m, TRIGGER_TOKENS),
    )  # fmt: skip
    return folder


def family(null: str, method: str) -> str:
    """The test family of a report's test, by its method (see FAMILIES)."""
    text = method.lower()
    if "model-free" in text:
        return "exact hits"
    if text.startswith("prefix"):
        return "prefix"
    if "decoy" in text:
        return "decoy rank"
    if null == "H0-base":
        return "H0-base"
    if "fisher exact" in text:
        return "Fisher"
    if "permutation" in text or "rank sum" in text or "rank-sum" in text:
        return "rank sum"
    return f"{null}: {method.split()[0]}"


def outcome(report: Report) -> dict[str, Any]:
    """The verdict, hits and, per test family, [log10 p, rejects, decides]."""
    tests: dict[str, list[Any]] = {}
    for t in report.tests:
        name = family(str(t.null), t.method)
        tests[name] = [t.log10_p, bool(t.rejects), bool(getattr(t, "decides", True))]
    return {"verdict": str(report.verdict), "hits": report.hits, "tests": tests}


def verify_both(key: Any, model: Any, base: Any) -> dict[str, Any]:
    """Verify at each alpha of ALPHAS (the model behind a Memo: same answers and scores);
    an exception is recorded, never raised."""
    row: dict[str, Any] = {}
    for alpha in ALPHAS:
        try:
            row[f"{alpha:g}"] = outcome(verify(key, model, base_model=base, alpha=alpha))
        except Exception as exc:  # a crash is a finding too (exit code 2, not "verified")
            row[f"{alpha:g}"] = {"verdict": "error", "error": f"{type(exc).__name__}: {exc}"}
    return row


class Gauntlet:
    """The world, its key-independent null providers, and the run over settings and keys.
    ``providers`` picks some of NULL_PROVIDERS (the other-data cheater is trained only if
    it is one of them)."""

    def __init__(self, work: Path, providers: Sequence[str] = NULL_PROVIDERS) -> None:
        self.work = work
        self.names = tuple(providers)
        self.world = TinyWorld(work).build(other_data="other-data" in self.names)
        assert self.world.base is not None
        self.nan = nan_weights(self.world.base)
        self.other_plant: dict[str, Any] = {}
        self.seconds: dict[str, float] = dict(self.world.seconds)

    def trained_other_plant(self, name: str, setting: Setting) -> Any:
        """Another user's plant of the same clean records (own key, same settings), and the
        base fine-tuned on it: trained once per setting."""
        if name not in self.other_plant:
            start = time.perf_counter()
            folder = plant_key(
                self.world, setting, self.work / name / "other-plant", key_seed(f"{name}-other", 0)
            )
            self.other_plant[name] = self.world.honest(folder)
            self.seconds[f"other-plant {name}"] = time.perf_counter() - start
        return self.other_plant[name]

    def providers(self, name: str, setting: Setting, index: int) -> tuple[Any, dict[str, Any]]:
        """The base (remembered for this key) and every null provider for key ``index``."""
        base = Memo(self.world.base)
        models: dict[str, Callable[[], Any]] = {
            "base": lambda: base,
            "nan": lambda: Memo(self.nan),
            "nan-10%": lambda: Memo(PartialNaN(base, NAN_SHARE, seed=index)),
            "constant": lambda: Memo(ConstantScores(base, CONSTANT_SCORE)),
            "temperature-1": lambda: Memo(ServedModel(base, temperature=1.0, seed=index)),
            "repeat-prompt": lambda: Memo(RepeatPrompt(base)),
            "other-plant": lambda: Memo(self.trained_other_plant(name, setting)),
            "other-data": lambda: Memo(self.world.other_data),
        }
        return base, {p: models[p]() for p in self.names}

    def run_setting(self, name: str, setting: Setting, keys: int, honest: int) -> dict[str, Any]:
        rows: dict[str, list[dict[str, Any]]] = {p: [] for p in (*self.names, "honest")}
        seconds: dict[str, float] = {"plant": 0.0, "honest training": 0.0}
        seconds.update({p: 0.0 for p in rows})
        if "other-plant" in self.names:
            self.trained_other_plant(name, setting)
        for index in range(keys):
            start = time.perf_counter()
            folder = plant_key(self.world, setting, self.work / name / f"key{index:04d}",
                               key_seed(name, index))  # fmt: skip
            key = load_key(folder / "key.json")
            seconds["plant"] += time.perf_counter() - start
            base, models = self.providers(name, setting, index)
            for provider, model in models.items():
                start = time.perf_counter()
                rows[provider].append({"key": index, **verify_both(key, model, base)})
                seconds[provider] += time.perf_counter() - start
            if index < honest:
                start = time.perf_counter()
                model = Memo(self.world.honest(folder))
                seconds["honest training"] += time.perf_counter() - start
                start = time.perf_counter()
                rows["honest"].append({"key": index, **verify_both(key, model, base)})
                seconds["honest"] += time.perf_counter() - start
        return {"setting": asdict(setting), "keys": keys, "rows": rows, "seconds": seconds}


def machine() -> dict[str, Any]:
    from results_doc import machine_line

    return {
        "nproc": os.cpu_count(),
        "machine": machine_line(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def run(
    keys: int,
    honest: int,
    work: Path,
    settings: Sequence[str] = tuple(SETTINGS),
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    """Every setting's keys against every null provider (and ``honest`` honest fine-tunes per
    setting); the results as saved to results.json (and to ``checkpoint`` after each setting,
    marked ``partial``, so that an interrupted run keeps what it finished)."""
    started = time.perf_counter()
    gauntlet = Gauntlet(work)
    results: dict[str, Any] = {}

    def data(partial: bool) -> dict[str, Any]:
        return {
            **machine(),
            "alphas": list(ALPHAS),
            "settings": results,
            "seconds": {**gauntlet.seconds, "total": time.perf_counter() - started},
            "partial": partial,
        }

    for name in settings:
        setting = SETTINGS[name]
        count = setting.key_count(keys)
        start = time.perf_counter()
        results[name] = gauntlet.run_setting(name, setting, count, min(honest, count))
        results[name]["seconds"]["total"] = time.perf_counter() - start
        print(f"{name}: {count} keys in {time.perf_counter() - start:.0f} s", flush=True)
        if checkpoint is not None:
            checkpoint.write_bytes(orjson.dumps(data(partial=True)))
    return data(partial=False)


# --- analysis -----------------------------------------------------------------------------


def verdicts(rows: Sequence[dict[str, Any]], alpha: float, verdict: str) -> int:
    return sum(row[f"{alpha:g}"]["verdict"] == verdict for row in rows)


def false_verified(rows: Sequence[dict[str, Any]], alpha: float) -> int:
    return verdicts(rows, alpha, str(Verdict.VERIFIED))


def errors(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [row[a]["error"] for row in rows for a in row if a != "key" and "error" in row[a]]


def log10_pvalues(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per family, the log10 p-values of the keys where the test ran (from the first alpha's
    report: the answers and scores are the same at every alpha)."""
    by: dict[str, list[float]] = {}
    for row in rows:
        for name, (log10_p, *_) in row[f"{ALPHAS[0]:g}"].get("tests", {}).items():
            by.setdefault(name, []).append(log10_p)
    return {name: np.array(values) for name, values in by.items()}


def rejected(rows: Sequence[dict[str, Any]], alpha: float) -> dict[str, int]:
    """Per family, how many keys' tests rejected at their share of ``alpha`` (``.rejects``)."""
    counts: dict[str, int] = {}
    for row in rows:
        for name, (_, rejects, *_) in row[f"{alpha:g}"].get("tests", {}).items():
            counts[name] = counts.get(name, 0) + bool(rejects)
    return counts


def binomial_flag(count: int, runs: int, level: float = 1e-2) -> bool:
    """Whether ``count`` raw rejections in ``runs`` are too many for a valid test at ``level``:
    P[Binomial(runs, level) >= count] < FLAG_LEVEL (a valid test is dominated by that)."""
    from scipy.stats import binom

    return count > 0 and float(binom.sf(count - 1, runs, level)) < FLAG_LEVEL


def excess_flag(excess: float, runs: int) -> bool:
    """Whether the worst excess of the empirical CDF over uniform is beyond what a uniform
    sample shows with probability FLAG_LEVEL (one-sided DKW: exp(-2 n eps^2))."""
    return runs > 0 and excess > math.sqrt(math.log(1 / FLAG_LEVEL) / (2 * runs))


def per_test(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per family: runs, raw p <= 1e-2 from log10 p (independent of the verdict's Bonferroni
    split), ``.rejects`` at each alpha, and the worst excess of P[p <= u] over u."""
    out: dict[str, dict[str, Any]] = {}
    rejects = {alpha: rejected(rows, alpha) for alpha in ALPHAS}
    for name, logs in log10_pvalues(rows).items():
        excess, at = worst_excess(10.0**logs)
        raw = int((logs < -2).sum())
        out[name] = {
            "runs": len(logs),
            "raw_1e-2": raw,
            "raw_1e-6": int((logs < -6).sum()),
            "min_log10_p": float(logs.min()),
            **{f"rejects_{alpha:g}": rejects[alpha].get(name, 0) for alpha in ALPHAS},
            "worst_excess": excess,
            "at": at,
            "raw_flag": binomial_flag(raw, len(logs)),
            "excess_flag": excess_flag(excess, len(logs)),
        }
    return out


def pooled(data: dict[str, Any], provider: str) -> list[dict[str, Any]]:
    return [row for s in data["settings"].values() for row in s["rows"].get(provider, [])]


# --- rendering ----------------------------------------------------------------------------


def _floors(setting: dict[str, Any]) -> str:
    decoys = -setting["n"] * math.log10(setting["decoys"] + 1) if setting["decoys"] else None
    fisher = -math.log10(math.comb(2 * setting["n"], setting["n"])) if setting["controls"] else None
    parts = [f"decoy rank {decoys:.1f}" if decoys is not None else "no decoys"]
    parts.append(f"controls {fisher:.1f}" if fisher is not None else "no controls")
    return ", ".join(parts)


def render(data: dict[str, Any]) -> str:
    """The markdown tables: settings, false 'verified' per provider and setting, per-test
    rejections and the worst excess of each test's p-values over uniform."""
    settings = data["settings"]
    names = list(settings)
    lines = [
        "| setting | K | m | bits | pairs x replicas | controls | decoys | keys | log10 floors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in settings.items():
        st = s["setting"]
        lines.append(
            f"| {name} | {st['k']} | {st['m']} | {st['m'] * math.log2(st['k']):.0f} "
            f"| {st['n']} x {st['replicas']} | {'yes' if st['controls'] else 'no'} "
            f"| {st['decoys']} | {s['keys']} | {_floors(st)} |"
        )
    lines += [
        "",
        "False 'verified' at alpha 1e-6 / at 1e-2, per null provider and setting (inconclusive:"
        " no test can reach alpha with this key, or too many queries failed; errors:"
        " verifications that raised); the honest row is the detection rate:",
        "",
        "| provider | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for provider in (*NULL_PROVIDERS, "honest"):
        cells = []
        for name in names:
            rows = settings[name]["rows"].get(provider, [])
            if not rows:
                cells.append("-")
                continue
            strict, loose = (false_verified(rows, a) for a in ALPHAS)
            cell = f"{strict} / {loose} of {len(rows)}"
            if provider != "honest" and (strict or loose):
                cell = f"**{cell}**"
            unsure = [verdicts(rows, a, str(Verdict.INCONCLUSIVE)) for a in ALPHAS]
            if any(unsure):
                cell += f" ({unsure[0]} / {unsure[1]} inconclusive)"
            if errors(rows):
                cell += f" ({len(errors(rows)) // len(ALPHAS)} errors)"
            cells.append(cell)
        lines.append(f"| {provider} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per test, over every setting: keys where it ran; **raw** = p <= 1e-2 from its log10 p"
        " (no Bonferroni split: a valid test has at most 1% of them); rejected at its share of"
        " 1e-6 / of 1e-2 (what the verdict used); worst P[p <= u] - u over u (at u). "
        f"! = too many for a valid test (P < {FLAG_LEVEL:g}: binomial for raw, DKW for the "
        "excess).",
        "",
        "| provider | " + " | ".join(FAMILIES) + " |",
        "|---|" + "---|" * len(FAMILIES),
    ]
    for provider in NULL_PROVIDERS:
        if not pooled(data, provider):
            continue
        stats = per_test(pooled(data, provider))
        cells = []
        for fam in FAMILIES:
            t = stats.get(fam)
            if t is None:
                cells.append("-")
                continue
            raw = f"{t['raw_1e-2']}{'!' if t['raw_flag'] else ''}/{t['runs']}"
            excess = f"{t['worst_excess']:+.2f}{'!' if t['excess_flag'] else ''} ({t['at']:.2g})"
            cells.append(f"{raw}; {t['rejects_1e-06']} / {t['rejects_0.01']}; {excess}")
        lines.append(f"| {provider} | " + " | ".join(cells) + " |")
    errs = sorted({e for p in NULL_PROVIDERS for e in errors(pooled(data, p))})
    if errs:
        lines += ["", "Errors raised by verify:"] + [f"- `{e}`" for e in errs[:5]]
    honest = pooled(data, "honest")
    lines += [
        "",
        f"{sum(s['keys'] for s in settings.values())} keys x {len(NULL_PROVIDERS)} null "
        f"providers x {len(ALPHAS)} alphas, {len(honest)} honest fine-tunes; "
        f"{data['seconds']['total'] / 60:.1f} min in all ({data['machine']}; {data['date']})"
        + (" - **partial run** (interrupted)." if data.get("partial") else "."),
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """Empirical CDF of each test's p-values (pooled over settings) per null provider, log-log
    against uniform: a valid test stays on or below the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 8), sharex=True, sharey=True)
    grid = np.logspace(-6, 0, 200)
    for axis, provider in zip(axes.flat, NULL_PROVIDERS, strict=True):
        by_family = log10_pvalues(pooled(data, provider))
        if by_family and all((logs >= 0).all() for logs in by_family.values()):
            axis.text(1e-5, 0.3, "every p-value = 1", fontsize=10)
        for fam, logs in sorted(by_family.items()):
            p = 10.0**logs
            share = np.array([(p <= u).mean() for u in grid])
            share[share == 0] = np.nan  # log axes: nothing to draw below the first p
            axis.step(grid, share, where="post", label=f"{fam} ({len(p)})")
        axis.plot(grid, grid, color="black", linestyle="--", label="uniform")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_ylim(1e-4, 1.5)
        axis.set_title(provider)
        axis.legend(loc="lower right", fontsize=7)
    for axis in axes[1]:
        axis.set_xlabel("u")
    for axis in axes[:, 0]:
        axis.set_ylabel("share of keys with p <= u")
    fig.suptitle("Null gauntlet: empirical CDF of each test's p-values (valid: on or below)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    from results_doc import DOC, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100, help="keys per setting (scaled)")
    parser.add_argument("--honest", type=int, default=3, help="honest fine-tunes per setting")
    parser.add_argument("--quick", action="store_true", help="3 keys, 1 honest; no docs")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default, all cores, fastest on an idle machine; 1 is"
        " ~35%% slower but a busy machine slows multi-threaded tiny models 5-10x)",
    )
    parser.add_argument("--render-only", action="store_true", help="from --work's results.json")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave the docs")
    args = parser.parse_args()
    results = args.work / "results.json"
    if args.render_only:
        data = orjson.loads(results.read_bytes())
    else:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        keys, honest = (3, 1) if args.quick else (args.keys, args.honest)
        data = run(keys, honest, args.work, args.settings, checkpoint=results)
        data.update(quick=args.quick, threads=torch.get_num_threads())
        results.write_bytes(orjson.dumps(data))
        print(f"results: {results}")
    table = render(data)
    print(table)
    if args.no_doc or data.get("quick"):
        plot(data, args.work / "null_gauntlet.png")
        return
    plot(data, DOC.parent / "img" / "null_gauntlet.png")
    body = (
        __doc__.split("\n\n", 1)[1].split("Run:")[0].strip()
        + "\n\n"
        + table
        + "\n\n![empirical CDFs of the p-values](img/null_gauntlet.png)\n"
    )
    write_section("null_gauntlet", "The null gauntlet: trying to break the verdict", body)


if __name__ == "__main__":
    main()
