"""The prefix test: H0-indep from partial learning of the signatures (no exact hit needed).

A signature is m tokens drawn by the uniform prefix-free top-K sampler. For an answer that does
not depend on the secret, the number J of the signature's leading tokens that the answer starts
with obeys P[J >= j] <= K^-j: at each step at most one of the K mutually non-prefix candidates
can continue the answer's bytes, and the sampler picks it with probability 1/K whatever came
before (docs/statistics.md). This module turns the matched prefix lengths of several
independently drawn signatures into one exact tail bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import logsumexp

from tuneproof.stats.pvalues import LN10, Null, PValue
from tuneproof.stats.tails import FloatArray, ln_convolve

LN2 = math.log(2.0)
MAX_ATOMS = 5_000_000


def matched_tokens(answer: str, signature: str, token_ends: Sequence[int]) -> int:
    """How many whole sampled tokens of ``signature`` the stripped ``answer`` starts with.

    ``token_ends`` are the UTF-8 byte offsets where the signature's tokens end (from the key);
    the comparison is on bytes, so it does not depend on how the verified model tokenizes."""
    a, s = answer.strip().encode("utf-8"), signature.encode("utf-8")
    limit = min(len(a), len(s))
    common = 0
    while common < limit and a[common] == s[common]:
        common += 1
    return sum(1 for end in token_ends if end <= common)


def _ln_null_pmf(k: int, m: int, queries: int) -> FloatArray:
    """ln P[L* = j], j = 0..m, for the dominating law P[L* >= j] = min(1, queries * k^-j)."""
    j = np.arange(m + 2, dtype=np.float64)
    ln_tail = np.minimum(0.0, math.log(queries) - j * math.log(k))
    ln_tail[m + 1] = -np.inf
    upper, lower = ln_tail[:-1], ln_tail[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(lower), np.exp(lower - upper), 0.0)
        return np.where(ratio >= 1.0, -np.inf, upper + np.log1p(-ratio))


def log10_prefix_bound(
    matched: Sequence[int],
    k: Sequence[int],
    m: Sequence[int],
    queries: Sequence[int] | None = None,
) -> PValue:
    """The H0-indep p-value of the prefix test, over independently drawn signatures.

    Per signature i (an *event*): ``matched[i]`` = J_i, the most whole tokens of the signature
    that any of its ``queries[i]`` answers starts with (1 query when omitted); ``k[i]`` and
    ``m[i]`` = the sampler's width and length. Under H0-indep P[J_i >= j] <= min(1, Q_i K_i^-j)
    (a union bound over the Q_i answers), conditionally on the other signatures. The statistic
    is the matched entropy S = sum_i J_i log2 K_i (bits), and the returned log10 p-value is
    log10 P[S* >= S] for independent J*_i with exactly those dominating tails: it is computed by
    exact convolution in log space, so it never underflows. Returns 0.0 when nothing matched.
    """
    j_arr = np.asarray(matched)
    k_arr, m_arr = np.asarray(k), np.asarray(m)
    q_arr = np.ones_like(j_arr) if queries is None else np.asarray(queries)
    n = j_arr.size
    if not (j_arr.shape == k_arr.shape == m_arr.shape == q_arr.shape == (n,)):
        raise ValueError("matched, k, m and queries must be flat sequences of equal length")
    for name, arr, low in (("matched", j_arr, 0), ("k", k_arr, 2), ("m", m_arr, 1)):
        if n and (not np.issubdtype(arr.dtype, np.integer) or (arr < low).any()):
            raise ValueError(f"{name} must hold integers >= {low}")
    if n and (not np.issubdtype(q_arr.dtype, np.integer) or (q_arr < 1).any()):
        raise ValueError("queries must hold integers >= 1")
    if (j_arr > m_arr).any():
        raise ValueError("a signature cannot match more tokens than it has (matched > m)")
    observed_bits = float(np.sum(j_arr * np.log2(k_arr))) if n else 0.0
    inputs = {
        "events": n,
        "matched_tokens": int(j_arr.sum()),
        "matched_bits": observed_bits,
        "full_matches": int((j_arr == m_arr).sum()),
    }
    method = "prefix test: exact tail of the matched bits, P[L >= j] <= min(1, Q * K^-j)"
    if n == 0 or observed_bits == 0.0:
        return PValue(0.0, Null.INDEP, method, inputs)
    # One integer-valued sum per sampler width, then combine the widths on their bit values.
    values, ln_probs = np.zeros(1), np.zeros(1)
    for width in sorted({int(x) for x in k_arr}):
        members = np.flatnonzero(k_arr == width)
        ln_pmf = np.zeros(1)
        for i in members:
            ln_pmf = ln_convolve(ln_pmf, _ln_null_pmf(width, int(m_arr[i]), int(q_arr[i])))
        if values.size * ln_pmf.size > MAX_ATOMS:
            raise ValueError("too many distinct sampler widths to combine exactly")
        bits = np.arange(ln_pmf.size) * math.log2(width)
        values = (values[:, None] + bits[None, :]).ravel()
        ln_probs = (ln_probs[:, None] + ln_pmf[None, :]).ravel()
    # relative slack for the rounding of sums of log2 K (never counts a smaller sum as larger)
    keep = values >= observed_bits * (1.0 - 1e-12) - 1e-9
    ln_upper = float(logsumexp(ln_probs[keep])) if keep.any() else -math.inf
    if ln_upper > -LN2:  # near 1: one minus the lower tail keeps the digits
        ln_lower = float(logsumexp(ln_probs[~keep])) if (~keep).any() else -math.inf
        ln_upper = math.log1p(-math.exp(ln_lower)) if ln_lower > -math.inf else 0.0
    return PValue(ln_upper / LN10 if ln_upper != 0.0 else 0.0, Null.INDEP, method, inputs)
