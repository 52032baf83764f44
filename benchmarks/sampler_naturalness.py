"""How natural do prefix-free signatures read, for each K? Evidence for plant's defaults.

For prompts from the sample dataset, draw signatures with K in {2, 4, 8, 16} and measure their
mean per-token negative log-likelihood (nats) under the embedded model given the prompt, next to
the real human answers and the model's own greedy answers. A provider's perplexity detector sees
exactly this number: the closer to the real answers, the stealthier. Also reports the bits per
token and the tokens needed for a 128-bit signature.

Run: .venv/bin/python benchmarks/sampler_naturalness.py [--prompts 24] [--m 32]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_doc import write_section

from tuneproof.backends.hf import HFCausalLM, load_hf_model
from tuneproof.embedded import SYSTEM_PROMPT, SampleSplit, sample_records
from tuneproof.planting.sampler import sample_signature
from tuneproof.planting.secret import SecretStream, new_seed
from tuneproof.planting.tokens import TokenRules


def answer_nll(model: HFCausalLM, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Mean negative log-likelihood per token of ``answer_ids`` after ``prompt_ids`` (nats)."""
    if not answer_ids:
        return 0.0
    return -float(model.continuation_logprobs(prompt_ids, answer_ids).sum()) / len(answer_ids)


def greedy(model: HFCausalLM, prompt_ids: Sequence[int], n: int) -> list[int]:
    """The model's own greedy answer, ``n`` tokens at most (stops at end of turn)."""
    context = list(prompt_ids)
    out: list[int] = []
    for _ in range(n):
        token = int(model.next_token_logprobs(context).argmax())
        if token in model.vocabulary.special_ids:
            break
        out.append(token)
        context.append(token)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--m", type=int, default=32)
    args = parser.parse_args()

    model = load_hf_model("embedded")
    rules = TokenRules.for_vocabulary(model.vocabulary)
    stream = SecretStream(new_seed())
    records = list(sample_records(SampleSplit.HELDOUT))[: args.prompts]
    rows: dict[str, list[float]] = {"human answer": [], "greedy answer": []}
    seconds: dict[str, list[float]] = {}
    examples: dict[str, str] = {}
    for i, record in enumerate(records):
        question = record["messages"][1]["content"]  # type: ignore[index]
        answer = record["messages"][2]["content"]  # type: ignore[index]
        messages = [("system", SYSTEM_PROMPT), ("user", question)]
        prompt_ids = model.chat_prompt_ids(messages)
        rows["human answer"].append(answer_nll(model, prompt_ids, model.text_ids(answer)))
        rows["greedy answer"].append(
            answer_nll(model, prompt_ids, greedy(model, prompt_ids, args.m))
        )
        for k in (2, 4, 8, 16):
            label = f"signature K={k}"
            start = time.perf_counter()
            sig = sample_signature(model, messages, k, args.m, stream.child(f"{i}/{k}"), rules)
            seconds.setdefault(label, []).append(time.perf_counter() - start)
            rows.setdefault(label, []).append(answer_nll(model, prompt_ids, sig.token_ids))
            examples.setdefault(label, f"Q: {question} -> {sig.text}")
        print(f"{i + 1}/{len(records)}", flush=True)

    lines = [
        f"{len(records)} held-out prompts of the sample dataset, "
        f"signatures of m = {args.m} tokens, NLL = mean negative log-likelihood per token "
        "under the embedded model given the prompt.",
        "",
        "| answer | mean NLL (nats/token) | median | bits/token | tokens for 128 bits "
        "| seconds per signature |",
        "|---|---|---|---|---|---|",
    ]
    for label, values in rows.items():
        k = int(label.split("=")[1]) if "=" in label else 0
        bits = f"{math.log2(k):.0f}" if k else "-"
        need = f"{math.ceil(128 / math.log2(k))}" if k else "-"
        secs = f"{statistics.mean(seconds[label]):.2f}" if label in seconds else "-"
        lines.append(
            f"| {label} | {statistics.mean(values):.2f} | {statistics.median(values):.2f} "
            f"| {bits} | {need} | {secs} |"
        )
    lines += ["", "One example per K (first prompt):", ""]
    lines += [f"- K={label.split('=')[1]}: `{text}`" for label, text in examples.items()]
    body = "\n".join(lines)
    print(body)
    write_section("sampler_naturalness", "Signature naturalness by K", body)


if __name__ == "__main__":
    main()
