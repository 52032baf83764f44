"""The natural sampler: signatures drawn as the generator's own text (temperature 1, nucleus
0.95, over the allowed pieces), with no cap and no prefix-free restriction.

The capped sampler (:mod:`tuneproof.planting.sampler`) bounds every signature's chance by
``k**-m``, which the exact-hit and prefix tests rest on, at a price a provider who knows the
generator can see: every token of a signature lies among the generator's few likeliest
prefix-free pieces, and where the generator is confident its choice is flattened. A learned
detector that walks each answer against the generator finds that walk in nearly every backdoor
(docs/stealth.md). A natural signature leaves no such walk: it is the generator's answer drawn
as the generator itself would draw it.

What the statistics keep: the decoy rank test (the signature's log-likelihood among R decoys)
and the answer rank test (how far the model's answer follows the signature, among its decoys)
are valid for *any* candidate distribution, because the secret picks the planted one among R + 1
candidates drawn alike for the same prompt, uniformly (docs/statistics.md). The exact-hit and
prefix bounds are not: a natural signature's chance has no bound, so keys of this sampler
record ``bits = 0`` and verification runs neither test for them.

Each step is a nucleus draw (:func:`~tuneproof.planting.continuation.nucleus_pick`, temperature
1, ``top_p`` :data:`NATURAL_TOP_P`, as the rest of the answer is drawn) among the pieces the
token rules allow, with one uniform of the candidate's secret stream: the signature's sentence
reads as one sample of the generator from its first token to its last, and the generator's
long tail of junk tokens (a 135M model at temperature 1 strays into hex strings) is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from tuneproof.planting.continuation import CONTINUATION_TOP_P, nucleus_pick
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.tokens import TokenRules

NATURAL_TOP_P = CONTINUATION_TOP_P
"""Nucleus of the natural signature's draw: the same as the continuation's."""


def sample_natural_lockstep(
    batch_logprobs: Callable[[Sequence[Sequence[int]]], Sequence[npt.NDArray[np.floating]]],
    rules: TokenRules,
    m: int,
    streams: Sequence[SecretStream],
    top_p: float = NATURAL_TOP_P,
) -> list[list[int]]:
    """``m`` tokens per stream, all in lockstep: ``batch_logprobs`` gets every sequence's tokens
    so far and returns the next-token log-probs of each (a batched forward pass); each token is
    drawn by :func:`nucleus_pick` (``top_p``) among the pieces :meth:`TokenRules.mask` allows
    at its step."""
    if m < 1:
        raise ValueError("the natural sampler needs m >= 1")
    drawn: list[list[int]] = [[] for _ in streams]
    for step in range(m):
        allowed = rules.mask(step, m)
        rows = batch_logprobs(drawn)
        for tokens, row, stream in zip(drawn, rows, streams, strict=True):
            tokens.append(nucleus_pick(np.asarray(row), top_p, stream.random(), allowed))
    return drawn
