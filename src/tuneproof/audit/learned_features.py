"""The learned detector's features (:mod:`tuneproof.audit.learned`): the generator's walk of
each answer (its prefix-free top-k ranking, as the sampler drew signatures), the last user
turn's tail under the generator, hashed character n-grams, and sentence embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneproof.audit.scoring import FloatArray
from tuneproof.config import DEFAULT_K, DEFAULT_M, DEFAULT_SUPPORT

Chat = tuple[tuple[str, str], ...]
"""A record as a hashable chat: its prompt turns, then ('assistant', answer)."""

FEATURE_SETS = ("model", "text", "embed")
TAIL_TOKENS = 8
"""Last tokens of the last user turn scored one by one (a trigger has at most 6 by default)."""
TAIL_CONTEXT_TOKENS = 64
"""Tokens of the last user turn (its end) the tail features see."""
TEXT_CHARS = 80
"""Characters of the user turn's tail and the answer's head the n-gram and embedding features
read."""


class Featurizer:
    """Each record's feature row: the chosen feature sets side by side (dense ones
    standardised), model features computed once per distinct record."""

    def __init__(
        self, generator: Any, sets: Sequence[str], step: Callable[[str, int, int], None]
    ) -> None:
        self.generator, self.sets, self.step = generator, tuple(sets), step
        self._model_rows: dict[Chat, FloatArray] = {}

    def features(self, chats: Sequence[Chat]) -> Any:
        """The feature matrix of ``chats`` (a scipy CSR matrix)."""
        from scipy import sparse

        blocks: list[Any] = []
        if "model" in self.sets:
            blocks.append(sparse.csr_matrix(_standardised(self.model_features(chats))))
        if "text" in self.sets:
            blocks.append(text_features(chats))
        if "embed" in self.sets:
            blocks.append(sparse.csr_matrix(_standardised(embed_features(chats))))
        return sparse.hstack(blocks, format="csr")

    def model_features(self, chats: Sequence[Chat]) -> FloatArray:
        """:func:`model_rows` of every chat (cached by content), in batches of
        :data:`BATCH_ROWS` records."""
        from tuneproof.planting.tokens import TokenRules

        rules = TokenRules.for_vocabulary(self.generator.vocabulary)
        missing = list(dict.fromkeys(c for c in chats if c not in self._model_rows))
        for start in range(0, len(missing), BATCH_ROWS):
            self.step("learned: model features", start, len(missing))
            batch = missing[start : start + BATCH_ROWS]
            for chat, row in zip(batch, model_rows(self.generator, rules, batch), strict=True):
                self._model_rows[chat] = row
        self.step("learned: model features", len(missing), len(missing))
        return np.array([self._model_rows[c] for c in chats])


BATCH_ROWS = 32
"""Records whose model features are computed in one batch (one batched forward per step)."""


def _standardised(x: FloatArray) -> FloatArray:
    x = np.nan_to_num(np.asarray(x, dtype=float))
    spread = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def _user_text(chat: Chat) -> str:
    return next((content for role, content in reversed(chat[:-1]) if role == "user"), "")


def model_rows(
    model: Any, rules: Any, chats: Sequence[Chat], k: int = DEFAULT_K, m: int = DEFAULT_M
) -> FloatArray:
    """The model features of each record: the answer's walk (:func:`signature_walks`), its
    head read as the generator's own sample (:func:`answer_head_scores`), the last user turn's
    tail (:func:`tail_scores`) and the answer's and turn's lengths."""
    items = [(list(c[:-1]), c[-1][1]) for c in chats]
    walks = signature_walks(model, rules, items, k, m)
    heads = answer_head_scores(model, items)
    tails = tail_scores(model, [_user_text(c) for c in chats], rules)
    lengths = np.array(
        [
            [
                math.log1p(len(c[-1][1])),
                math.log1p(len(c[-1][1].split())),
                math.log1p(len(_user_text(c))),
                float(c[-1][1] != c[-1][1].strip()),
            ]
            for c in chats
        ]
    ).reshape(len(chats), 4)
    return np.hstack([walks, heads, tails, lengths])


WALK_WIDTH = max(4 * DEFAULT_K, DEFAULT_SUPPORT)
"""Prefix-free candidates a walk step ranks: the answer token's rank is seen up to this (at
least the sampler's support, so that every token a signature can hold is seen)."""


@dataclass
class _Walk:
    """One answer's walk so far."""

    data: bytes
    drawn: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    used: int = 0
    top_used: int = 0
    top_steps: int = 0
    alive: bool = True

    def advance(self, values: Any, kept: list[int], token_bytes: Sequence[bytes], k: int) -> None:
        step = len(self.drawn)
        rank = next(
            (r for r, t in enumerate(kept) if self.data.startswith(token_bytes[t], self.used)), -1
        )
        if rank < 0:
            self.alive = False
            self.drawn.append(kept[0] if kept else 0)  # a filler: the batch stays in lockstep
            return
        token = kept[rank]
        self.drawn.append(token)
        self.ranks.append(rank)
        self.logprobs.append(float(values[token]))
        self.used += len(token_bytes[token])
        if rank < k and self.top_steps == step:
            self.top_steps += 1
            self.top_used = self.used
        self.alive = self.used < len(self.data)

    def row(self, m: int, width: int) -> list[float]:
        if not self.data:
            return [0.0, 0.0, 0.0, 0.0, math.log1p(width), 0.0, 0.0]
        return [
            float(self.top_steps),
            float(len(self.ranks)),
            float(self.top_steps == m and self.top_used == len(self.data)),
            self.top_used / len(self.data),
            float(np.mean(np.log1p(self.ranks))) if self.ranks else math.log1p(width),
            float(np.mean(self.logprobs)) if self.logprobs else 0.0,
            math.log1p(len(self.data) - self.used),
        ]


def signature_walks(
    model: Any,
    rules: Any,
    items: Sequence[tuple[list[tuple[str, str]], str]],
    k: int = DEFAULT_K,
    m: int = DEFAULT_M,
    width: int = WALK_WIDTH,
) -> FloatArray:
    """Walk each (prompt, answer) against the sampler: at each of ``m`` steps the generator's
    ``width`` most probable prefix-free allowed tokens after the prompt (through the chat
    template, as the sampler sees it) and the answer so far; the one that prefixes the rest of
    the answer (at most one can) is the step's token, its rank the step's rank. A signature is
    ``m`` steps of rank below ``k`` that use the answer up exactly. All rows advance in
    lockstep (one batched forward per step, ``next_token_logprobs_batch``).

    One row per item: [steps in the top k from the start, steps matched (rank < width), used
    up exactly after m top-k steps, share of the answer's bytes covered by the top-k steps,
    mean log(1 + rank) and mean log-prob of the matched steps, log(1 + bytes left)]."""
    from tuneproof.planting.sampler import ranking, select_prefix_free, signature_prompt_ids

    token_bytes = model.vocabulary.token_bytes
    walks = [_Walk(answer.encode("utf-8") if prompt else b"") for prompt, answer in items]
    live = [i for i, w in enumerate(walks) if w.data]
    contexts = {i: signature_prompt_ids(model, items[i][0]) for i in live}
    for step in range(m):
        if not live:
            break
        values = model.next_token_logprobs_batch(
            [contexts[i] for i in live], [walks[i].drawn for i in live]
        )

        def allowed(token: int, step: int = step) -> bool:
            return bool(rules.allowed(token, step, m))

        for row, i in enumerate(live):
            if not walks[i].alive:  # done: rides along with a filler, the batch in lockstep
                walks[i].drawn.append(walks[i].drawn[-1])
                continue
            kept = select_prefix_free(ranking(values[row]), token_bytes, width, allowed)
            walks[i].advance(values[row], kept, token_bytes, k)
        alive = [i for i in live if walks[i].alive]
        if len(alive) <= len(live) // 2:  # fewer rows: cheaper to prefill them again
            live = alive
    return np.array([w.row(m, width) for w in walks]).reshape(len(items), 7)


def signature_walk(
    model: Any,
    rules: Any,
    prompt: list[tuple[str, str]],
    answer: str,
    k: int = DEFAULT_K,
    m: int = DEFAULT_M,
) -> FloatArray:
    """:func:`signature_walks` of one (prompt, answer)."""
    row: FloatArray = signature_walks(model, rules, [(prompt, answer)], k, m)[0]
    return row


HEAD_TOKENS = 24
"""Tokens of the answer's head that :func:`answer_head_scores` reads (a signature's sentence)."""
HEAD_TOP_P = 0.95
"""The nucleus the head's tokens are checked against (the natural sampler's and the
continuation's)."""


def answer_head_scores(
    model: Any, items: Sequence[tuple[list[tuple[str, str]], str]], tail: int = HEAD_TOKENS
) -> FloatArray:
    """The answer's first ``tail`` tokens read as a sample of the generator answering the
    prompt (Fast-DetectGPT's analytic curvature, and the nucleus a sampler would have cut), in
    right-padded batches of one forward each: mean log-prob, mean entropy, the curvature
    (sum of log-probs + sum of entropies) / sqrt(sum of variances), the share and the number of
    tokens outside the ``HEAD_TOP_P`` nucleus, the share of top-1 tokens, the least log-prob
    and the mean log(1 + rank). A natural signature is such a sample with nothing outside the
    nucleus; the file's own answers, written otherwise, are not."""
    import torch

    from tuneproof.planting.sampler import signature_prompt_ids

    out = np.zeros((len(items), 8))
    rows = []
    for prompt, answer in items:
        context = signature_prompt_ids(model, prompt) if prompt else []
        head = model.text_ids(answer.lstrip()[: 16 * tail])[:tail] if answer.strip() else []
        rows.append((context, head))
    scored = [i for i, (context, head) in enumerate(rows) if context and head]
    for start in range(0, len(scored), HEAD_BATCH):
        batch = scored[start : start + HEAD_BATCH]
        logits = _padded_logits(model, [rows[i][0] + rows[i][1] for i in batch])
        for b, i in enumerate(batch):
            context, head = rows[i]
            at = torch.arange(len(context) - 1, len(context) + len(head) - 1)
            logprobs = torch.log_softmax(logits[b, at], dim=-1).double()
            probs = logprobs.exp()
            chosen = logprobs[torch.arange(len(head)), torch.tensor(head)]
            entropy = -(probs * logprobs).sum(dim=1)
            variance = (probs * logprobs**2).sum(dim=1) - entropy**2
            above = logprobs > chosen[:, None]
            mass = (probs * above).sum(dim=1)
            ranks = above.sum(dim=1).double()
            outside = (mass >= HEAD_TOP_P).double()
            out[i] = [
                float(chosen.mean()),
                float(entropy.mean()),
                float((chosen.sum() + entropy.sum()) / variance.sum().clamp_min(1e-9).sqrt()),
                float(outside.mean()),
                float(outside.sum()),
                float((ranks == 0).double().mean()),
                float(chosen.min()),
                float(torch.log1p(ranks).mean()),
            ]
    return out


HEAD_BATCH = 16
"""Records whose answer heads are scored in one forward."""


def _padded_logits(model: Any, sequences: Sequence[list[int]]) -> Any:
    """The generator's float logits for token id ``sequences``, right-padded into one batch
    with an attention mask (one forward, no gradients)."""
    import torch

    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, seq in enumerate(sequences):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
    with torch.inference_mode():
        return model.model(input_ids=ids, attention_mask=mask).logits.float()


def tail_scores(
    model: Any, texts: Sequence[str], rules: Any, tail: int = TAIL_TOKENS
) -> FloatArray:
    """The last ``tail`` tokens of each text (a last user turn) under the generator as plain
    text (as the trigger sampler continues it), in one right-padded batch: for each, from the
    end, its log-prob, log(1 + rank) and the probability mass ranked above it (a nucleus sample
    stays below ``top_p``); then the mean log-prob of the tail minus that of the text before it,
    and how many tail tokens open a word."""
    import torch

    token_bytes = model.vocabulary.token_bytes
    out = np.zeros((len(texts), 3 * tail + 2))
    out[:, 1 : 3 * tail : 3] = math.log1p(len(token_bytes))  # no token: the worst rank
    out[:, 2 : 3 * tail : 3] = 1.0
    rows = [
        model.text_ids(t[-8 * TAIL_CONTEXT_TOKENS :].rstrip())[-TAIL_CONTEXT_TOKENS:] for t in texts
    ]
    scored = [i for i, ids in enumerate(rows) if len(ids) >= 2]
    if not scored:
        return out
    logits = _padded_logits(model, [rows[i] for i in scored])
    for b, i in enumerate(scored):
        n = len(rows[i])
        logprobs = torch.log_softmax(logits[b, : n - 1], dim=-1)
        targets = torch.tensor(rows[i][1:])
        chosen = logprobs[torch.arange(n - 1), targets]
        last = logprobs[-tail:]
        above = last > chosen[-tail:, None]
        ranks = above.sum(dim=1).double().numpy()
        mass = (last.exp() * above).sum(dim=1).double().numpy()
        values = chosen.double().numpy()
        for j in range(min(tail, len(values))):
            out[i, 3 * j : 3 * j + 3] = [
                values[-1 - j], math.log1p(ranks[-1 - j]), mass[-1 - j],
            ]  # fmt: skip
        head, end = values[:-tail], values[-tail:]
        out[i, 3 * tail] = float(end.mean() - (head.mean() if len(head) else end.mean()))
        out[i, 3 * tail + 1] = sum(rules.opens_word(t, token_bytes[t]) for t in rows[i][-tail:])
    return out


def text_features(chats: Sequence[Chat], n_features: int = 2**15) -> Any:
    """Hashed character 1-4-grams of the last user turn's tail and of the answer's head, each
    block L2-normalised (a scipy CSR matrix)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(
        analyzer="char", ngram_range=(1, 4), n_features=n_features, alternate_sign=False
    )
    tails = vectorizer.transform(["\x02" + _user_text(c)[-TEXT_CHARS:] for c in chats])
    heads = vectorizer.transform([c[-1][1][:TEXT_CHARS] + "\x03" for c in chats])
    return sparse.hstack([tails, heads], format="csr")


def embed_features(chats: Sequence[Chat]) -> FloatArray:
    """all-MiniLM-L6-v2 embeddings of the user turn's tail and the answer's head, and their
    cosine."""
    from tuneproof.audit.model_detectors import default_embedder

    embedder = default_embedder()
    tails = embedder.embed([_user_text(c)[-TEXT_CHARS:] for c in chats])
    heads = embedder.embed([c[-1][1][:TEXT_CHARS] for c in chats])
    return np.hstack([tails, heads, np.sum(tails * heads, axis=1, keepdims=True)])
