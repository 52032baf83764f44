"""What a key can prove, known before anything is uploaded: the warnings ``tuneproof plant``
prints (decoys the signature space cannot hold apart; tests, or the whole key, that can never
reach alpha), from the same plan the verification will use."""

from __future__ import annotations

import math

from tuneproof.key import Key
from tuneproof.verification.evidence import DEFAULT_ALPHA, plan_verification
from tuneproof.verification.queries import build_queries


def key_warnings(key: Key, alpha: float | None = None) -> list[str]:
    """What a user should know before uploading: decoys that the signature space cannot hold
    distinctly, and tests (or the whole key) that can never reach ``alpha``, with each test's
    smallest attainable p-value (a model that learnt every backdoor perfectly)."""
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    warnings: list[str] = []
    settings = key.settings
    space = settings.k**settings.m
    if settings.decoys and settings.decoys + 1 > space:
        warnings.append(
            f"--decoys {settings.decoys}: {settings.decoys + 1} candidates per pair exceed the"
            f" K^m = {space} distinct signatures (K={settings.k}, m={settings.m}), so candidates"
            " repeat and tie; use fewer decoys or a longer signature (--m)"
        )
    plan = plan_verification(build_queries(key, 0), alpha=alpha, logprobs=True)
    floors = ", ".join(
        f"{t.name} 10^{t.log10_floor:.1f}" for t in plan.tests if math.isfinite(t.log10_floor)
    )
    if not plan.counted:
        warnings.append(
            f"no test can reach alpha = {alpha:g} with this key, even for a model that learnt"
            f" every backdoor (smallest attainable p-values: {floors}); plant more pairs"
            " (--n) or longer signatures (--m) - nothing can be verified with it"
        )
    else:
        for test in plan.unreachable():
            warnings.append(
                f"the {test.name} test can never reach its share of alpha = {alpha:g}"
                f" (smallest attainable p = 10^{test.log10_floor:.1f}); it will be reported"
                " but cannot decide"
            )
    return warnings
