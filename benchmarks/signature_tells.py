"""What a provider who runs the generator sees in a signature: per-token tells of each sampler
setting against the data's own answers, alone and combined. Evidence for plant's defaults.

For held-out prompts of the sample, draw one signature per prompt with each setting and take
the first m tokens of the real answer to the same prompt; score both under the generator (the
embedded model, which the provider has: Kerckhoffs) by the mean log-prob per token, the share of
tokens that are the generator's top choice, and the share within its top 8. Reports each
feature's two-sided AUROC (signature vs human opening) and that of a logistic regression on all
three (5-fold cross-validated): the best this detector can do on these features.

Run: .venv/bin/python benchmarks/signature_tells.py [--prompts 60]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_doc import write_section

from tuneproof.backends.hf import load_hf_model
from tuneproof.embedded import SampleSplit, sample_records
from tuneproof.planting.sampler import sample_signature_sets, signature_prompt_ids
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.tokens import TokenRules

# (label, k, m, support)
SETTINGS = [
    ("uniform K=8, m=12 (0.1 default)", 8, 12, 8),
    ("capped K=8 over 64, m=12", 8, 12, 64),
    ("capped K=4 over 64, m=12 (default)", 4, 12, 64),
    ("capped K=4 over 64, m=18", 4, 18, 64),
    ("capped K=2 over 64, m=24", 2, 24, 64),
]
FEATURES = ["mean log-prob", "top-1 share", "top-8 share"]


def features(model: Any, chat: list[tuple[str, str]], ids: list[int]) -> list[float]:
    import torch

    prompt = signature_prompt_ids(model, chat)
    with torch.inference_mode():
        logits = model.model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
    logprobs = torch.log_softmax(logits.float(), -1)
    chosen = logprobs[torch.arange(len(ids)), torch.tensor(ids)]
    ranks = (logprobs > chosen[:, None]).sum(-1).numpy()
    return [float(chosen.mean()), float(np.mean(ranks == 0)), float(np.mean(ranks < 8))]


def aurocs(signatures: np.ndarray, humans: np.ndarray) -> list[float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    x = np.vstack([signatures, humans])
    y = np.array([1] * len(signatures) + [0] * len(humans))
    single = [roc_auc_score(y, x[:, j]) for j in range(x.shape[1])]
    combined = cross_val_predict(LogisticRegression(), x, y, cv=5, method="predict_proba")[:, 1]
    return [max(a, 1 - a) for a in [*single, roc_auc_score(y, combined)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=60)
    args = parser.parse_args()
    model = load_hf_model("embedded")
    rules = TokenRules.for_vocabulary(model.vocabulary)
    records = list(itertools.islice(sample_records(SampleSplit.HELDOUT), args.prompts))
    chats = [[(m["role"], m["content"]) for m in r["messages"][:-1]] for r in records]
    answers = [str(r["messages"][-1]["content"]) for r in records]
    rows, examples = [], []
    for label, k, m, support in SETTINGS:
        groups = [
            (c, [SecretStream(bytes([7]) * 32, f"{i}".encode())]) for i, c in enumerate(chats)
        ]
        drawn = [d[0] for d in sample_signature_sets(model, groups, k, m, rules, None, support)]
        sig = np.array(
            [features(model, c, list(d.token_ids)) for c, d in zip(chats, drawn, strict=True)]
        )
        human = np.array(
            [
                features(model, c, model.text_ids(a)[:m])
                for c, a in zip(chats, answers, strict=True)
                if a
            ]
        )
        scores = aurocs(sig, human)
        means = " / ".join(f"{sig[:, j].mean():.2f} vs {human[:, j].mean():.2f}" for j in range(3))
        rows.append(
            f"| {label} | {m * np.log2(k):.0f} | "
            + " | ".join(f"{a:.2f}" for a in scores)
            + f" | {means} |"
        )
        examples.append(f"- {label}: `{drawn[0].text}` / `{drawn[1].text}`")
        print(rows[-1], flush=True)
    body = (
        f"{args.prompts} held-out prompts of the sample, one signature each per setting, against"
        " the first m tokens of the real answer; features under the embedded generator. AUROC"
        " two-sided; 'combined' is a 5-fold cross-validated logistic regression on the three.\n\n"
        "| setting | bits | AUROC " + " | AUROC ".join(FEATURES) + " | AUROC combined"
        " | signature vs human (log-prob / top-1 / top-8) |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nFirst two signatures of each setting:\n\n"
        + "\n".join(examples)
    )
    write_section("signature_tells", "What the generator sees in a signature", body)


if __name__ == "__main__":
    main()
