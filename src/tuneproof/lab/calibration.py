"""Calibration harness: simulate the null of each test many times and count false positives.

A p-value is valid when P[p <= alpha] <= alpha under its null. Each scenario below draws data
from a null (H0-base: hits ~ Bernoulli(p_i); H0-indep: signatures drawn uniformly and answers
from a process that never sees them, including the bound's worst case; H0-controls: a random
planted/held-out split of pairs that behave alike, or exchangeable scores), computes the
p-value with the public functions of :mod:`tuneproof.stats`, and reports the observed rate of
p <= alpha with a Clopper-Pearson interval. One negative control (a deliberately invalid bound)
checks that the harness can see a miscalibrated test.

Used by ``benchmarks/calibration.py`` (full size) and the test suite (small size).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from scipy.stats import beta, binom

from tuneproof.stats.pvalues import (
    Null,
    combine_fisher,
    log10_fisher_exact,
    log10_model_free_bound,
    log10_permutation_test,
    log10_poisson_binomial_sf,
)

ALPHAS = (1e-2, 1e-3)
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Scenario:
    """The log10 p-values of one test over many independent simulations of its null."""

    test: str
    null: Null
    description: str
    log10_p: FloatArray
    valid: bool = True  # False for the negative control, which must be flagged
    exact_size: Mapping[float, float] | None = None  # P[p <= alpha], where it is known exactly


@dataclass(frozen=True)
class CalibrationRow:
    """Observed false-positive rate of one scenario at one alpha."""

    scenario: Scenario
    alpha: float
    false_positives: int

    @property
    def trials(self) -> int:
        return int(self.scenario.log10_p.size)

    @property
    def rate(self) -> float:
        return self.false_positives / self.trials

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Two-sided Clopper-Pearson interval for the false-positive rate."""
        x, n, tail = self.false_positives, self.trials, (1 - confidence) / 2
        low = 0.0 if x == 0 else float(beta.ppf(tail, x, n - x + 1))
        high = 1.0 if x == n else float(beta.ppf(1 - tail, x + 1, n - x))
        return low, high

    def excess_p(self) -> float:
        """P[at least this many false positives] if the true rate were exactly alpha."""
        return float(binom.sf(self.false_positives - 1, self.trials, self.alpha))

    def consistent(self, level: float = 1e-3) -> bool:
        """True unless the rate is significantly above alpha (one-sided binomial test)."""
        return self.excess_p() >= level

    @property
    def exact_size(self) -> float | None:
        """The exact P[p <= alpha] of the simulated null, when the scenario knows it."""
        sizes = self.scenario.exact_size
        return None if sizes is None else sizes[self.alpha]

    def matches_exact_size(self, level: float = 1e-3) -> bool:
        """True when the observed count is consistent with the exact size (two-sided test)."""
        size = self.exact_size
        if size is None:
            return True
        low = binom.cdf(self.false_positives, self.trials, size)
        high = binom.sf(self.false_positives - 1, self.trials, size)
        return bool(min(low, high) >= level / 2)


def rows(scenarios: Iterable[Scenario], alphas: Sequence[float] = ALPHAS) -> list[CalibrationRow]:
    """One row per scenario and alpha."""
    return [
        CalibrationRow(s, a, int(np.count_nonzero(s.log10_p <= math.log10(a))))
        for s in scenarios
        for a in alphas
    ]


def markdown_table(table: Sequence[CalibrationRow]) -> str:
    """The rows as a Markdown table (rate and 95% Clopper-Pearson interval)."""
    lines = [
        "| test | null | scenario | trials | alpha | false positives | rate | 95% CI "
        "| exact size | verdict |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in table:
        low, high = row.interval()
        ok = row.consistent()
        if row.scenario.valid:
            verdict = "ok (<= alpha)" if ok else "**ABOVE alpha**"
            if not row.matches_exact_size():
                verdict += ", **off the exact size**"
        else:
            verdict = "flagged, as it should be" if not ok else "**not flagged**"
        lines.append(
            f"| `{row.scenario.test}` | {row.scenario.null} | {row.scenario.description} "
            f"| {row.trials:,} | {row.alpha:g} | {row.false_positives:,} | {row.rate:.2e} "
            f"| [{low:.1e}, {high:.1e}] "
            f"| {'-' if row.exact_size is None else f'{row.exact_size:.2e}'} | {verdict} |"
        )
    return "\n".join(lines)


def _by_statistic(stats: Sequence[int], compute: Callable[[int], float]) -> FloatArray:
    """Evaluate a p-value that depends on the data only through an integer statistic."""
    memo = {s: compute(s) for s in set(stats)}
    return np.array([memo[s] for s in stats])


def _size(log10_tail: Sequence[float], alphas: Sequence[float] = ALPHAS) -> dict[float, float]:
    """Exact size of a test that rejects when P[X >= k] <= alpha and whose null distribution is
    the one the p-value is computed from: the largest attainable p-value <= alpha."""
    return {
        a: max((10.0**v for v in log10_tail if v <= math.log10(a)), default=0.0) for a in alphas
    }


# --------------------------------------------------------------------------- H0-base


def base_scenario(
    trials: int, rng: np.random.Generator, n: int = 40, designs: int = 20
) -> Scenario:
    """Hits ~ independent Bernoulli(p_i) with p_i ~ Beta(0.5, 4), i.e. the base model sampling."""
    out, sizes = [], []
    for _ in range(designs):
        p = rng.beta(0.5, 4.0, size=n)
        log10_probs = np.log10(p)
        ks = (rng.random((trials // designs, n)) < p).sum(axis=1).tolist()

        def p_of(k: int, lp: FloatArray = log10_probs) -> float:
            return log10_poisson_binomial_sf(lp, k).log10_p

        out.append(_by_statistic(ks, p_of))
        sizes.append(_size([p_of(k) for k in range(n + 1)]))
    exact = {a: float(np.mean([size[a] for size in sizes])) for a in ALPHAS}
    what = f"{n} queries, p_i ~ Beta(0.5, 4)"
    return Scenario("log10_poisson_binomial_sf", Null.BASE, what, np.concatenate(out), True, exact)


# --------------------------------------------------------------------------- H0-indep


def de_bruijn(alphabet: str, order: int) -> str:
    """A linear de Bruijn sequence: every string of length ``order`` occurs exactly once."""
    k = len(alphabet)
    a = [0] * k * order
    seq: list[int] = []

    def db(t: int, p: int) -> None:
        if t > order:
            if order % p == 0:
                seq.extend(a[1 : p + 1])
        else:
            a[t] = a[t - p]
            db(t + 1, p)
            for j in range(a[t - p] + 1, k):
                a[t] = j
                db(t + 1, t)

    db(1, 1)
    cyclic = "".join(alphabet[i] for i in seq)
    return cyclic + cyclic[: order - 1]


def indep_worst_case_scenario(
    trials: int, rng: np.random.Generator, replicas: int = 1, alphabet: str = "abcd", m: int = 4
) -> Scenario:
    """The bound's worst case, where it is exact.

    Signatures are uniform over the K^m strings of length m (a prefix-free set); each answer is
    a window of a de Bruijn sequence, so a window of L characters contains L - m + 1 distinct
    candidates and P[hit] = (L - m + 1) / K^m = the bound with ``min_signature_chars = m``.
    With ``replicas`` > 1, each signature is queried through that many disjoint windows.
    """
    k = len(alphabet)
    sequence = de_bruijn(alphabet, m)
    lengths = [6, 9, 12, 16, 20, 24, 30, 36, 44, 52][: max(1, 10 // replicas)]
    events = len(lengths)
    span = sum(lengths) * replicas
    codes = rng.integers(k, size=(trials, events, m))
    offsets = rng.integers(len(sequence) - span + 1, size=trials)  # independent of the codes
    hits_per_trial = []
    for t in range(trials):
        pos, k_hits = int(offsets[t]), 0
        for e, length in enumerate(lengths):
            signature = "".join(alphabet[c] for c in codes[t, e])
            hit = False
            for _ in range(replicas):
                hit |= signature in sequence[pos : pos + length]
                pos += length
            k_hits += hit
        hits_per_trial.append(k_hits)
    q_lengths = [length for length in lengths for _ in range(replicas)]
    groups = [e for e in range(events) for _ in range(replicas)]
    bits = [m * math.log2(k)] * len(q_lengths)
    mins = [m] * len(q_lengths)

    def p_of(k_hits: int) -> float:
        hits = [e < k_hits for e in groups]  # which events hit does not matter, only how many
        return log10_model_free_bound(
            bits, q_lengths, hits, groups, min_signature_chars=mins
        ).log10_p

    what = f"worst case: de Bruijn answers, K={k}, m={m}, {events} signatures"
    if replicas > 1:
        what += f" x {replicas} replicas"
    exact = _size([p_of(k_hits) for k_hits in range(events + 1)])
    p_values = _by_statistic(hits_per_trial, p_of)
    return Scenario("log10_model_free_bound", Null.INDEP, what, p_values, True, exact)


# A synthetic byte vocabulary over {a, b, c} with deliberately prefix-related tokens, so that the
# sampler's prefix-free selection does real work and candidates overlap inside answers.
SYNTHETIC_VOCAB: tuple[bytes, ...] = (
    b"a", b"ab", b"abc", b"b", b"ba", b"bac", b"c", b"ca", b"cab",
    b"cc", b"bb", b"aa", b"acb", b"cba", b"bca", b"abcab", b"cabc",
)  # fmt: skip


def synthetic_ranker(prompt: int) -> Callable[[Sequence[int]], Iterable[int]]:
    """A deterministic stand-in for a language model: token order from a hash of the context."""

    @cache
    def rank(context: tuple[int, ...]) -> tuple[int, ...]:
        digest = hashlib.blake2b(repr((prompt, context)).encode(), digest_size=8).digest()
        order = list(range(len(SYNTHETIC_VOCAB)))
        random.Random(digest).shuffle(order)
        return tuple(order)

    return lambda context: rank(tuple(context))


def indep_sampler_scenario(
    trials: int, rng: np.random.Generator, n: int = 10, k: int = 3, m: int = 4, prompts: int = 100
) -> Scenario:
    """Signatures from the real prefix-free sampler and secret stream of
    ``tuneproof.planting.sampler``;
    answers stitched from random paths of the public candidate tree (a provider who knows the
    generator but not the secret), drawn with a generator independent of the stream."""
    from tuneproof.planting.sampler import enumerate_prefix_free, sample_prefix_free
    from tuneproof.planting.secret import SecretStream

    stream = SecretStream(rng.bytes(32))
    rankers = [synthetic_ranker(p) for p in range(prompts)]
    trees = [[s.decode() for s in enumerate_prefix_free(r, SYNTHETIC_VOCAB, k, m)] for r in rankers]
    bits = [m * math.log2(k)] * n
    out = np.empty(trials)
    for t in range(trials):
        lengths, hits = [], []
        for prompt in rng.integers(prompts, size=n):
            tree = trees[prompt]
            answer = "".join(tree[i] for i in rng.choice(len(tree), size=int(rng.integers(1, 3))))
            signature = sample_prefix_free(rankers[prompt], SYNTHETIC_VOCAB, k, m, stream)
            lengths.append(len(answer))
            hits.append(signature.text in answer)
        out[t] = log10_model_free_bound(bits, lengths, hits).log10_p
    what = f"real sampler, K={k}, m={m}, {n} signatures, answers from the public tree"
    return Scenario("log10_model_free_bound", Null.INDEP, what, out)


def drawn_length_negative_control(trials: int, rng: np.random.Generator, n: int = 10) -> Scenario:
    """NOT a valid test: the bound computed with the drawn signature's length as
    ``min_signature_chars``. 64 candidates (m = 1), 4 of one character, 60 of eight; the answer
    "abcd" contains the 4 short ones. The harness must flag this row."""
    candidates = ["a", "b", "c", "d"] + [f"{c}{c}{c}{c}{c}{c}{c}{c}" for c in "efghijklmnop"] * 5
    drawn = rng.integers(len(candidates), size=(trials, n))
    out = np.empty(trials)
    for t in range(trials):
        signatures = [candidates[i] for i in drawn[t]]
        hits = [s in "abcd" for s in signatures]
        chars = [len(s) for s in signatures]
        out[t] = log10_model_free_bound([6.0] * n, [4] * n, hits, min_signature_chars=chars).log10_p
    what = "NEGATIVE CONTROL: drawn signature length used as min_signature_chars (invalid)"
    return Scenario("log10_model_free_bound", Null.INDEP, what, out, valid=False)


# --------------------------------------------------------------------------- H0-controls


def fisher_scenario(
    trials: int, rng: np.random.Generator, n: int = 20, designs: int = 20
) -> Scenario:
    """2n pairs with heterogeneous hit probabilities q_j ~ Beta(0.5, 1.5) that do not depend on
    which half was planted; a uniformly random half is planted."""
    out = []
    for _ in range(designs):
        q = rng.beta(0.5, 1.5, size=2 * n)
        reps = trials // designs
        hits = rng.random((reps, 2 * n)) < q
        planted = rng.permuted(np.tile(np.arange(2 * n) < n, (reps, 1)), axis=1)
        hp = (hits & planted).sum(axis=1)
        hh = (hits & ~planted).sum(axis=1)
        stats = (hp * (2 * n + 1) + hh).tolist()
        out.append(
            _by_statistic(
                stats, lambda s: log10_fisher_exact(s // (2 * n + 1), n, s % (2 * n + 1), n).log10_p
            )
        )
    what = f"{n} planted vs {n} held-out pairs, q_j ~ Beta(0.5, 1.5)"
    return Scenario("log10_fisher_exact", Null.CONTROLS, what, np.concatenate(out))


def permutation_exact_scenario(trials: int, rng: np.random.Generator, n: int = 7) -> Scenario:
    """Exchangeable scores with ties (Student t, 3 d.o.f., rounded to 0.5): exact enumeration."""
    scores = np.round(2 * rng.standard_t(3, size=(trials, 2 * n))) / 2
    out = np.array([log10_permutation_test(s[:n], s[n:]).log10_p for s in scores])
    what = f"{n} vs {n}, t(3) scores rounded (ties), exact over C({2 * n},{n}) splits"
    return Scenario("log10_permutation_test", Null.CONTROLS, what, out)


def permutation_mc_scenario(
    trials: int, rng: np.random.Generator, n: int = 25, resamples: int = 999
) -> Scenario:
    """Exchangeable continuous scores, Monte-Carlo with B = 999 (resolution 1e-3)."""
    scores = rng.normal(size=(trials, 2 * n))
    seeds = rng.integers(2**63, size=trials)
    out = np.array([
        log10_permutation_test(s[:n], s[n:], n_resamples=resamples, seed=int(seed)).log10_p
        for s, seed in zip(scores, seeds, strict=True)
    ])  # fmt: skip
    what = f"{n} vs {n}, normal scores, Monte-Carlo B = {resamples}"
    # continuous scores: (1 + count) / (B + 1) is uniform on {1, ..., B + 1} / (B + 1)
    exact = {a: math.floor(a * (resamples + 1)) / (resamples + 1) for a in ALPHAS}
    return Scenario("log10_permutation_test", Null.CONTROLS, what, out, True, exact)


def combine_uniform_scenario(trials: int, rng: np.random.Generator, n: int = 4) -> Scenario:
    """Fisher's method over n independent exactly uniform p-values (the tight case)."""
    log10_u = np.log10(rng.random((trials, n)))
    out = np.array([combine_fisher(row, null=Null.CONTROLS).log10_p for row in log10_u])
    what = f"{n} independent uniform p-values"
    return Scenario("combine_fisher", Null.CONTROLS, what, out, True, {a: a for a in ALPHAS})


def combine_discrete_scenario(trials: int, rng: np.random.Generator, n: int = 3) -> Scenario:
    """Fisher's method over n independent Fisher-exact p-values (discrete, conservative)."""
    parts = [fisher_scenario(trials, rng, n=10, designs=10).log10_p for _ in range(n)]
    stacked = np.stack([rng.permutation(p) for p in parts], axis=1)
    out = np.array([combine_fisher(row, null=Null.CONTROLS).log10_p for row in stacked])
    return Scenario("combine_fisher", Null.CONTROLS, f"{n} independent Fisher-exact p-values", out)


# --------------------------------------------------------------------------- all


def run_calibration(trials: int = 200_000, seed: int = 0) -> list[Scenario]:
    """Every scenario; the expensive ones (real sampler, Monte-Carlo) use fewer trials."""
    rng = np.random.default_rng(seed)
    return [
        base_scenario(trials, rng),
        indep_worst_case_scenario(trials, rng),
        indep_worst_case_scenario(trials, rng, replicas=2),
        indep_sampler_scenario(max(1, trials // 10), rng),
        fisher_scenario(trials, rng),
        permutation_exact_scenario(max(1, trials // 4), rng),
        permutation_mc_scenario(max(1, trials // 10), rng),
        combine_uniform_scenario(trials, rng),
        combine_discrete_scenario(trials, rng),
        drawn_length_negative_control(max(1, trials // 10), rng),
    ]
