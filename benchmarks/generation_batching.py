"""Batched vs one-at-a-time greedy generation on the embedded model, same prompts, same run.

Target (issue 4): batched generation at least 3x the tokens/s of one prompt at a time. Also
checks that both give the same answers. Run: .venv/bin/python benchmarks/generation_batching.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_doc import write_section

from tuneproof.backends.hf import load_hf_model
from tuneproof.embedded import SYSTEM_PROMPT, SampleSplit, sample_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    model = load_hf_model("embedded")
    records = list(sample_records(SampleSplit.HELDOUT))[: args.prompts]
    chats = [[("system", SYSTEM_PROMPT), ("user", r["messages"][1]["content"])] for r in records]  # type: ignore[index]
    model.generate(chats[:2], 4)  # warm-up

    rows = []
    answers = {}
    for label, batch in (("one at a time", 1), (f"batched ({args.batch_size})", args.batch_size)):
        start = time.perf_counter()
        out = model.generate(chats, args.max_new_tokens, batch_size=batch)
        seconds = time.perf_counter() - start
        tokens = sum(n for _, n in out)
        answers[label] = [text for text, _ in out]
        rows.append((label, tokens, seconds, tokens / seconds))
    base = rows[0][3]
    same = sum(a == b for a, b in zip(*answers.values(), strict=True))
    lines = [
        f"{args.prompts} held-out sample prompts, greedy, max {args.max_new_tokens} new tokens, "
        "embedded SmolLM2-135M-Instruct (float32, CPU).",
        "",
        "| mode | output tokens | seconds | tokens/s | ratio to one at a time |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {t} | {s:.1f} | {r:.1f} | {r / base:.2f}x |" for label, t, s, r in rows]
    lines += ["", f"Identical answers in both modes: {same}/{args.prompts}. Target: >= 3x."]
    body = "\n".join(lines)
    print(body)
    write_section("generation_batching", "Local generation: batched vs one at a time", body)


if __name__ == "__main__":
    main()
