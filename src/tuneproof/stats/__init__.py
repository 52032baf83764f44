"""The statistics core: the p-values of the three nulls, exact, in log10 space.

Every probability goes in and comes out as a base-10 logarithm, so a p-value of 1e-1400 is
``-1400.0`` and never underflows. Each test returns a :class:`PValue` that names the null
hypothesis it is for; ``docs/statistics.md`` states the nulls, the assumptions and the proofs.

numpy and scipy only: this package never imports torch. The calibration harness lives in
:mod:`tuneproof.lab.calibration` and is not imported here.
"""

from __future__ import annotations

from tuneproof.stats.decoys import (
    answer_rank,
    decoy_rank,
    log10_answer_rank_test,
    log10_decoy_rank_test,
)
from tuneproof.stats.prefix import log10_prefix_bound, matched_tokens
from tuneproof.stats.pvalues import (
    Null,
    PValue,
    combine_fisher,
    log10_binomial_sf,
    log10_fisher_exact,
    log10_model_free_bound,
    log10_permutation_test,
    log10_poisson_binomial_sf,
)
from tuneproof.stats.ranksum import log10_rank_sum_floor, log10_rank_sum_test

__all__ = [
    "Null",
    "PValue",
    "answer_rank",
    "combine_fisher",
    "decoy_rank",
    "log10_answer_rank_test",
    "log10_binomial_sf",
    "log10_decoy_rank_test",
    "log10_fisher_exact",
    "log10_model_free_bound",
    "log10_permutation_test",
    "log10_poisson_binomial_sf",
    "log10_prefix_bound",
    "log10_rank_sum_floor",
    "log10_rank_sum_test",
    "matched_tokens",
]
