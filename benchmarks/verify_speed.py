"""Verification speed on the embedded model: decoy scoring and queries against their floors.

Writes the section "verify_speed" of docs/benchmarks.md. Usage:
    .venv/bin/python benchmarks/verify_speed.py [--pairs 20] [--candidates 64]

What verify does on a local model, next to the physical floor of the same tokens:

- **Decoy scoring**: each planted pair's signature and its 63 decoys teacher-forced after the
  pair's prompt, every pair in one ``HFCausalLM.logprob`` call (the path ``rank_decoys`` takes).
  Candidates here are 12-token strings sampled from the model's own top-8 after each prompt (what
  the plant draws), the prompts held-out sample questions. The floor: per pair one forward of the
  prompt and one batched forward of its 64 continuations on that cache, nothing else. Also shown:
  the same call before pairs were grouped by prompt (every candidate re-reading its prompt,
  batches of 8), the setting of verify until 2026-12-02.
- **Queries**: greedy answers of 40 tokens to 45 prompts in batches of 8 (``generate``), against
  one batched forward per new token of the same batches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section

from tuneproof.backends.hf import HFCausalLM, answer_example, collate, load_hf_model
from tuneproof.backends.hf_lockstep import left_padded
from tuneproof.embedded import SYSTEM_PROMPT, SampleSplit, sample_records


def candidates_for(model: HFCausalLM, prompt: list[int], n: int, m: int, seed: int) -> list[str]:
    """``n`` strings of ``m`` tokens drawn from the top-8 after ``prompt`` (one batch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([prompt] * n), use_cache=True)
        drawn = []
        for _ in range(m):
            top = torch.topk(out.logits[:, -1], 8, dim=-1).indices
            token = top.gather(1, torch.randint(0, 8, (n, 1), generator=generator))
            drawn.append(token)
            out = model.model(input_ids=token, cache=out.cache, use_cache=True)
    ids = torch.cat(drawn, dim=1).tolist()
    return [model.tokenizer.decode(row) for row in ids]


def scoring_floor(model: HFCausalLM, prompts: list[list[int]], texts: list[list[str]]) -> float:
    import copy

    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        for prompt, group in zip(prompts, texts, strict=True):
            head = model.model(input_ids=torch.tensor([prompt[:-1]]), use_cache=True)
            batch = [answer_example(prompt[-1:], model.text_ids(t)) for t in group]
            cache = copy.deepcopy(head.cache)
            cache.batch_repeat_interleave(len(batch))
            ids, _, _ = collate(batch, model.pad_id)
            model.model(input_ids=ids, cache=cache, use_cache=True)
    return time.perf_counter() - start


def old_scoring(model: HFCausalLM, chats: list, texts: list[str], batch_size: int = 8) -> float:
    """The path before grouping by prompt: right-padded batches of whole prompt + candidate."""
    import torch

    from tuneproof.backends.hf import answer_logprobs

    items = [
        (model.chat_prompt_ids(c), model.text_ids(t)) for c, t in zip(chats, texts, strict=True)
    ]
    start = time.perf_counter()
    for i in range(0, len(items), batch_size):
        batch = [answer_example(p, c) for p, c in items[i : i + batch_size]]
        with torch.inference_mode():
            answer_logprobs(model.model, collate(batch, model.pad_id))
    return time.perf_counter() - start


def generation_floor(model: HFCausalLM, chats: list, new_tokens: int, batch_size: int) -> float:
    import torch

    prompts = sorted((model.chat_prompt_ids(c) for c in chats), key=len)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            group = prompts[i : i + batch_size]
            ids, mask = left_padded(group, model.pad_id)
            out = model.model(input_ids=ids, attention_mask=mask, use_cache=True)
            for _ in range(new_tokens - 1):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones((len(group), 1), dtype=torch.long)], 1)
                out = model.model(
                    input_ids=token, attention_mask=mask, cache=out.cache, use_cache=True
                )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--m", type=int, default=12)
    args = parser.parse_args()
    load = os.getloadavg()
    model = load_hf_model("embedded")
    records = list(sample_records(SampleSplit.HELDOUT))
    chats = [
        [("system", SYSTEM_PROMPT), ("user", r["messages"][1]["content"])]  # type: ignore[index]
        for r in records[: args.pairs]
    ]
    prompts = [model.chat_prompt_ids(c) for c in chats]
    groups = [
        candidates_for(model, p, args.candidates, args.m, seed) for seed, p in enumerate(prompts)
    ]
    flat_chats = [c for c, g in zip(chats, groups, strict=True) for _ in g]
    flat_texts = [t for g in groups for t in g]
    tokens = sum(len(model.text_ids(t)) + 1 for t in flat_texts)
    start = time.perf_counter()
    model.logprob(flat_chats, flat_texts)
    ours = time.perf_counter() - start
    floor = scoring_floor(model, prompts, groups)
    before = old_scoring(model, flat_chats, flat_texts)

    queries = [
        [("system", SYSTEM_PROMPT), ("user", r["messages"][1]["content"])]  # type: ignore[index]
        for r in records[args.pairs : args.pairs + 45]
    ]
    start = time.perf_counter()
    answers = model.generate(queries, 40, batch_size=8)
    generation = time.perf_counter() - start
    new = sum(n for _, n in answers)
    gen_floor = generation_floor(model, queries, 40, 8)

    rows = [
        "| step | tokens | ours (s) | tokens/s | floor (s) | floor tokens/s | ours / floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| decoy scoring, grouped by prompt (today) | {tokens:,} | {ours:.1f} | "
        f"{tokens / ours:,.0f} | {floor:.1f} | {tokens / floor:,.0f} | **{ours / floor:.2f}x** |",
        f"| decoy scoring, batches of 8 whole prompts (before) | {tokens:,} | {before:.1f} | "
        f"{tokens / before:,.0f} | {floor:.1f} | {tokens / floor:,.0f} | {before / floor:.2f}x |",
        f"| greedy queries (45 x 40 tokens at most, batches of 8) | {new:,} new | "
        f"{generation:.1f} | {new / generation:,.0f} | {gen_floor:.1f} (40 every row) | "
        f"{45 * 40 / gen_floor:,.0f} | {generation / gen_floor:.2f}x |",
    ]
    body = (
        f"{args.pairs} pairs x {args.candidates} candidates of {args.m} tokens after held-out "
        "sample prompts (the decoy rank test's scoring on the model under verification, float32), "
        "and 45 greedy queries, on the embedded model; the floors are the same tokens through the "
        f"model's forward passes only. Load average {load[0]:.2f} before.\n\n" + "\n".join(rows)
    )
    print(body)
    write_section("verify_speed", "Verification speed on the embedded model", body)


if __name__ == "__main__":
    main()
