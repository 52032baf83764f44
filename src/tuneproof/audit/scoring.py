"""How well a detector finds the backdoors: AUROC, survivors of top-Q filtering, cheater cost.

Every detector gives each record a suspicion score (higher = more suspicious). These functions
score the detector with the labels that only the key knows (True = backdoor record). In the
orderings, a backdoor tied with clean records is ranked below them (the cheater gets no luck
from ties); in the AUROC a tie counts one half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
DROP_SHARES = (0.01, 0.05, 0.10)


def auroc(scores: Sequence[float] | FloatArray, labels: Sequence[bool]) -> float:
    """P(score of a random backdoor > score of a random clean record), ties counting 1/2
    (the Mann-Whitney statistic); 0.5 = the detector cannot tell them apart."""
    values = np.asarray(scores, dtype=float)
    positive = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one backdoor and one clean record")
    from scipy.stats import rankdata  # lazily: the CLI's --help imports the audit package

    ranks = rankdata(values)  # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def suspicion_order(scores: Sequence[float] | FloatArray, labels: Sequence[bool]) -> list[int]:
    """Record indices from most to least suspicious; among equal scores clean records come
    first (the cheater's detector is given no luck)."""
    values = np.asarray(scores, dtype=float)
    positive = np.asarray(labels, dtype=bool)
    return sorted(range(len(values)), key=lambda i: (-values[i], bool(positive[i]), i))


def survivors(
    scores: Sequence[float] | FloatArray,
    labels: Sequence[bool],
    shares: Sequence[float] = DROP_SHARES,
) -> dict[float, int]:
    """For each share q: backdoors left when the provider drops its ceil(q * N) most suspicious
    records."""
    order = suspicion_order(scores, labels)
    positive = np.asarray(labels, dtype=bool)
    total = int(positive.sum())
    out = {}
    for share in shares:
        dropped = order[: math.ceil(share * len(order))]
        out[share] = total - int(positive[dropped].sum())
    return out


def cheater_share(scores: Sequence[float] | FloatArray, labels: Sequence[bool]) -> float:
    """The smallest share of the data a cheater must train on, taking records in the
    detector's order, to include every backdoor (1.0 = the whole file)."""
    order = suspicion_order(scores, labels)
    positive = np.asarray(labels, dtype=bool)
    last = max(rank for rank, index in enumerate(order) if positive[index])
    return (last + 1) / len(order)


def rank_average(score_lists: Sequence[Sequence[float] | FloatArray]) -> FloatArray:
    """The combined detector: the mean over detectors of each record's rank share (0..1, ties
    averaged), so detectors on different scales weigh the same."""
    if not score_lists:
        raise ValueError("no detector to combine")
    n = len(score_lists[0])
    from scipy.stats import rankdata

    shares = [rankdata(np.asarray(s, dtype=float)) / n for s in score_lists]
    return np.mean(shares, axis=0)


def robust_z(values: Sequence[float] | FloatArray) -> FloatArray:
    """|x - median| / (1.4826 MAD): how far each value sits from the bulk (0 when the data
    have no spread)."""
    x = np.asarray(values, dtype=float)
    median = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - median))
    if mad == 0:
        mad = float(np.std(x)) or 1.0
    return np.abs(x - median) / mad
