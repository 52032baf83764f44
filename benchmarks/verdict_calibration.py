"""Calibration of the verdict: false "verified" across many independent keys, and detection.

A small world where a model trains in seconds, so that hundreds of keys are affordable: the
SmolLM2 tokenizer reduced to the sample's tokens, a 2-layer Llama pretrained on clean sample
records (the *base*), and

- the cheater ``base``: returns the base untouched;
- the cheater ``other-data``: the base fine-tuned on the sample's held-out split (someone
  else's data);
- honest providers: the base fine-tuned on each key's planted file.

Every key is an independent plant (its own 256-bit secret; triggers and signatures drawn from
the base model by the real sampler) into the same clean records, with held-out controls. The
cheaters do not depend on the key, so each is trained once and verified against every key:
exactly the null hypotheses. Counts false "verified" verdicts and per-test rejections at
alpha = 1e-6, checks that every test's p-values sit at or above uniform (P[p <= u] <= u), and
measures the detection rate of honest fine-tunes.

Why a tiny world: the cheaters must be verified against hundreds of independent keys, and the
embedded model needs ~40 s per verification here (200 keys x 2 cheaters = 4.5 hours); the tests
and their p-values do not depend on the model's size, and H0-indep's bound holds for any model.

Run: .venv/bin/python benchmarks/verdict_calibration.py --keys 200 --honest 20  (~7 min)
The test suite runs the same code on a few keys (tests/test_verdict_calibration.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_doc import test_values

from tuneproof.api import verify
from tuneproof.backends.hf import HFCausalLM
from tuneproof.embedded import SampleSplit, embedded_gguf_path, sample_records
from tuneproof.key import load_key
from tuneproof.lab.finetune import chat_training_examples, dataset_chats, render_chat, train
from tuneproof.lab.tiny_models import compact_tokenizer, tiny_llama
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.planter import plant
from tuneproof.report.schema import Report
from tuneproof.types import ModelIdentity, Verdict

ALPHA = 1e-6
CLEAN_RECORDS = 60
PRETRAIN_RECORDS = 300
K, M, TRIGGER_TOKENS, PAIRS, REPLICAS = 8, 16, 6, 2, 5
LR = 3e-3
PRETRAIN_EPOCHS = 12
FINETUNE_EPOCHS = 30


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


@dataclass
class TinyWorld:
    """The base model, the two cheaters and the clean file every key is planted into."""

    work: Path
    tokenizer: Any = None
    base: HFCausalLM | None = None
    other_data: HFCausalLM | None = None
    clean: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def build(self, other_data: bool = True) -> TinyWorld:
        """Train the base (and, unless ``other_data`` is False, the other-data cheater)."""
        from transformers import AutoTokenizer

        start = time.perf_counter()
        self.work.mkdir(parents=True, exist_ok=True)
        train_records = list(sample_records(SampleSplit.TRAIN))
        heldout_records = list(sample_records(SampleSplit.HELDOUT))
        gguf = embedded_gguf_path()
        full = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        chats = [self._chat(r) for r in train_records + heldout_records]
        self.tokenizer = compact_tokenizer(full, [render_chat(full, c) for c in chats])
        self.clean = write_jsonl(self.work / "clean.jsonl", train_records[-CLEAN_RECORDS:])
        pretrain = [self._chat(r) for r in train_records[:PRETRAIN_RECORDS]]
        base_model = self._train(tiny_llama(self.tokenizer, seed=0), pretrain, PRETRAIN_EPOCHS)
        self.base = self._wrap(base_model, "tiny base")
        self.seconds["base"] = time.perf_counter() - start
        if not other_data:
            return self
        other = [self._chat(r) for r in heldout_records]
        self.other_data = self._wrap(
            self._train(base_model, other, FINETUNE_EPOCHS // 3), "other-data cheater"
        )
        self.seconds["other-data"] = time.perf_counter() - start - self.seconds["base"]
        return self

    @staticmethod
    def _chat(record: dict[str, Any]) -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in record["messages"]]

    def _train(self, model: Any, chats: list[Any], epochs: int) -> Any:
        import copy

        examples = chat_training_examples(self.tokenizer, chats)
        return train(
            copy.deepcopy(model), self.tokenizer, examples, epochs=epochs, lr=LR, threads=1
        )

    def _wrap(self, model: Any, name: str) -> HFCausalLM:
        identity = ModelIdentity(name=name, backend="transformers", source=str(self.work))
        return HFCausalLM(model, self.tokenizer, identity)

    def plant_key(self, index: int) -> Path:
        """Plant key number ``index`` (its secret derived from the index) into the clean file."""
        assert self.base is not None and self.clean is not None
        folder = self.work / f"key{index:04d}"
        folder.mkdir(exist_ok=True)
        plant(
            self.clean, folder / "planted.jsonl", folder / "key.json", n=PAIRS,
            replicas=REPLICAS, k=K, m=M, trigger_tokens=TRIGGER_TOKENS, controls=True,
            force=True, seed=hashlib.sha256(f"verdict-calibration/{index}".encode()).digest(),
            factory=ModelBackdoorFactory(self.base, K, M, TRIGGER_TOKENS),
        )  # fmt: skip
        return folder

    def honest(self, folder: Path) -> HFCausalLM:
        assert self.base is not None
        chats = dataset_chats(folder / "planted.jsonl")
        return self._wrap(self._train(self.base.model, chats, FINETUNE_EPOCHS), "honest")


def outcomes(report: Report) -> dict[str, Any]:
    """The verdict and, per test, log10 p and whether it rejected at its share of alpha (a null
    tested twice is named by its method, see results_doc.test_values)."""
    tests = {name: list(value) for name, value in test_values(report).items()}
    return {"verdict": str(report.verdict), "hits": report.hits, "tests": tests}


def calibrate(keys: int, honest_keys: int, work: Path) -> dict[str, Any]:
    """Verify both cheaters against ``keys`` keys and honest fine-tunes on the first
    ``honest_keys`` of them; return every outcome, grouped by provider."""
    world = TinyWorld(work).build()
    assert world.base is not None and world.other_data is not None
    results: dict[str, list[dict[str, Any]]] = {"base": [], "other-data": [], "honest": []}
    started = time.perf_counter()
    for index in range(keys):
        folder = world.plant_key(index)
        key = load_key(folder / "key.json")
        for name, model in (("base", world.base), ("other-data", world.other_data)):
            report = verify(key, model, base_model=world.base, alpha=ALPHA)
            results[name].append(outcomes(report))
        if index < honest_keys:
            report = verify(key, world.honest(folder), base_model=world.base, alpha=ALPHA)
            results["honest"].append(outcomes(report))
        if (index + 1) % 20 == 0:
            print(f"{index + 1}/{keys} keys, {time.perf_counter() - started:.0f} s", flush=True)
    return {"results": results, "seconds": {**world.seconds, "keys": time.perf_counter() - started}}


def false_verifications(rows: list[dict[str, Any]]) -> int:
    return sum(row["verdict"] == str(Verdict.VERIFIED) for row in rows)


def rejections(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        for null, (_, rejects) in row["tests"].items():
            counts[null] = counts.get(null, 0) + bool(rejects)
    return counts


def pvalues(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    by_null: dict[str, list[float]] = {}
    for row in rows:
        for null, (log10_p, _) in row["tests"].items():
            by_null.setdefault(null, []).append(log10_p)
    return {null: 10.0 ** np.array(values) for null, values in by_null.items()}


def worst_excess(p: np.ndarray) -> tuple[float, float]:
    """max over u of (share of p <= u) - u, and the u where it happens: <= 0 up to sampling
    noise when the p-values sit at or above uniform."""
    grid = np.unique(np.concatenate([p, np.linspace(0.01, 1, 100)]))
    excess = np.array([(p <= u).mean() - u for u in grid])
    at = int(np.argmax(excess))
    return float(excess[at]), float(grid[at])


def render(data: dict[str, Any]) -> str:
    results = data["results"]
    keys = len(results["base"])
    lines = [
        "| provider | keys | false 'verified' at 1e-6 | rejections per test | "
        "worst P[p <= u] - u (at u) |",
        "|---|---|---|---|---|",
    ]
    for name in ("base", "other-data"):
        rows = results[name]
        excess = {n: worst_excess(p) for n, p in pvalues(rows).items()}
        lines.append(
            f"| {name} | {len(rows)} | **{false_verifications(rows)}** | "
            + ", ".join(f"{n}: {c}" for n, c in sorted(rejections(rows).items()))
            + " | "
            + ", ".join(f"{n}: {e:+.3f} ({u:.2f})" for n, (e, u) in sorted(excess.items()))
            + " |"
        )
    world_seconds = sum(v for k, v in data["seconds"].items() if k != "keys")
    honest = results["honest"]
    detected = false_verifications(honest)
    indep = [row["tests"].get("H0-indep", [0.0])[0] for row in honest]
    lines += [
        "",
        f"Honest fine-tunes: **{detected}/{len(honest)} verified** (detection rate "
        f"{detected / max(1, len(honest)):.0%}); H0-indep log10 p median "
        f"{np.median(indep) if indep else float('nan'):.1f}, worst {max(indep, default=0):.1f}.",
        "",
        f"{keys} keys; world built in {world_seconds:.0f} s, keys planted and verified in "
        f"{data['seconds']['keys']:.0f} s.",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axis, name in zip(axes, ("base", "other-data"), strict=True):
        for null, p in sorted(pvalues(data["results"][name]).items()):
            xs = np.sort(p)
            axis.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=null)
        axis.plot([0, 1], [0, 1], color="black", linestyle="--", label="uniform")
        axis.set_title(f"cheater '{name}': empirical CDF of p")
        axis.set_xlabel("p")
        axis.legend(loc="lower right")
    axes[0].set_ylabel("share of keys with p-value <= x")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    from results_doc import DOC, write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--honest", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneproof-verdict-calibration"))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    data = calibrate(args.keys, args.honest, args.work)
    (args.work / "results.json").write_bytes(orjson.dumps(data))
    table = render(data)
    print(table)
    if args.no_doc:
        return
    plot(data, DOC.parent / "img" / "verdict_calibration.png")
    body = (
        __doc__.split("\n\n", 1)[1].split("Run:")[0].strip()
        + f"\n\nSettings: {PAIRS} pairs x {REPLICAS} replicas + {PAIRS} controls, K={K}, m={M} "
        f"({M * np.log2(K):.0f} bits), {CLEAN_RECORDS} clean records, alpha {ALPHA:g} split "
        "over the tests that ran (Bonferroni).\n\n"
        + table
        + "\n\n![empirical CDFs of the p-values](img/verdict_calibration.png)\n"
    )
    write_section("verdict_calibration", "Calibration of the verdict across keys", body)


if __name__ == "__main__":
    main()
