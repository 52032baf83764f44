"""The weights of the capped sampler: the generator's probabilities over a step's kept tokens,
none above 1/k, in exact integers (:func:`capped_weights`), and the draw among them
(:func:`pick`), which :mod:`tuneproof.planting.sampler` makes at every step of a signature.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence

import numpy as np

from tuneproof.planting.secret import SecretStream

CAP_UNIT = 1 << 20
"""The integer weight of a token at the cap 1/k: a step's weights sum to ``k * CAP_UNIT``."""


def capped_weights(logprobs: Sequence[float], k: int) -> list[int]:
    """Integer weights for candidates with these log-probabilities (by decreasing value, at least
    ``k`` of them): proportional to their probabilities renormalised over the candidates, except
    that none exceeds ``CAP_UNIT``, a ``1/k`` share of the total ``k * CAP_UNIT``
    (water-filling: the likeliest tokens are cut to the cap and the mass they lose goes to the
    others in proportion). Exact: a draw by these weights picks no token with probability above
    ``1/k``. Non-finite log-probs weigh 0."""
    n = len(logprobs)
    if n < k:
        raise ValueError(f"capped weights need at least k={k} candidates, got {n}")
    values = np.array(logprobs, dtype=np.float64)
    finite = np.isfinite(values)
    probs = np.zeros(n)
    if finite.any():
        probs[finite] = np.exp(values[finite] - values[finite].max())
    order = np.argsort(-probs, kind="stable")
    sorted_probs = probs[order]
    tail_sums = np.cumsum(sorted_probs[::-1])[::-1]  # sum of sorted_probs[j:]
    cap, total = 1.0 / k, k * CAP_UNIT
    shares = np.full(n, cap)
    for j in range(n):  # the first j (likeliest) tokens sit at the cap
        rest = 1.0 - j * cap
        if rest <= 0 or tail_sums[j] <= 0:
            break
        if sorted_probs[j] * rest / tail_sums[j] <= cap:
            shares[j:] = sorted_probs[j:] * rest / tail_sums[j]
            break
    weights = np.minimum(CAP_UNIT, np.floor(shares * total)).astype(np.int64)
    deficit = total - int(weights.sum())
    while deficit > 0:  # float rounding: hand out the rest, one unit each, never above the cap
        room = np.flatnonzero(weights < CAP_UNIT)
        give = room[:deficit]
        weights[give] += 1
        deficit -= len(give)
    out = np.zeros(n, dtype=np.int64)
    out[order] = weights
    return [int(w) for w in out]


def pick(choices: Sequence[int], ranked: Iterable[int], k: int, stream: SecretStream) -> int:
    """One of ``choices`` (the kept candidates, in rank order) by the secret ``stream``: uniform
    when there are exactly ``k`` (``stream.randbelow(k)``, the uniform sampler), else by
    :func:`capped_weights` of their log-probs under ``ranked``."""
    if len(choices) == k:
        return choices[stream.randbelow(k)]
    weights = step_weights(ranked, choices, k)
    draw = stream.randbelow(sum(weights))
    return choices[bisect.bisect_right(list(itertools.accumulate(weights)), draw)]


def step_weights(ranked: Iterable[int], choices: Sequence[int], k: int) -> list[int]:
    """The weights :func:`pick` draws ``choices`` by: equal for exactly ``k``, else
    :func:`capped_weights` of their log-probs under ``ranked``."""
    if len(choices) == k:
        return [1] * k
    logprob = getattr(ranked, "logprob", None)
    if logprob is None:
        raise TypeError("the capped sampler needs a ranking with log-probs (Ranking)")
    return capped_weights([float(logprob(t)) for t in choices], k)
