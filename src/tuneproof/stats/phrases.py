"""How a null hypothesis and a p-value are said in plain words: what each null claims, a
p-value for people (``10^-33.4``), a level (``2.5×10^-7``), and the one sentence that explains a
test's outcome. Strings only; used by the verification record and by the report's wording."""

from __future__ import annotations

import math

from tuneproof.stats.pvalues import Null

# What each null claims, and what its p-value measures, in plain words.
NULL_CLAIM: dict[Null, str] = {
    Null.BASE: "the returned model is just the unchanged base model",
    Null.INDEP: "the returned model never saw your secret backdoors",
    Null.CONTROLS: (
        "the returned model treats the backdoors you planted like the ones you kept private"
    ),
}
_NULL_EVIDENCE: dict[Null, str] = {
    Null.BASE: "the base model would produce this many secret signatures",
    Null.INDEP: (
        "a model that never saw them would match (or prefer over their decoys) this many"
        " secret signatures"
    ),
    Null.CONTROLS: "the planted backdoors would stand out this much from the held-out ones",
}


def format_p(log10_p: float) -> str:
    """A p-value for people: ``"0.62"`` above 0.001, else ``"10^-67.3"``."""
    if log10_p >= -3.0:
        return f"{10.0**log10_p:.2g}"
    return f"10^{log10_p:.1f}"


def format_alpha(alpha: float) -> str:
    """``1e-6`` -> ``"10^-6"``; ``2.5e-7`` -> ``"2.5×10^-7"``; ``0.05`` -> ``"0.05"``."""
    if alpha >= 1e-3:
        return f"{alpha:.3g}"
    exponent = math.floor(math.log10(alpha) + 1e-9)
    mantissa = alpha / 10.0**exponent
    if abs(mantissa - round(mantissa)) < 1e-6 and round(mantissa) == 1:
        return f"10^{exponent}"
    return f"{mantissa:.2g}×10^{exponent}"


def _chance_phrase(log10_p: float) -> str:
    """``"below 10^-33"`` for log10 p = -33.4: a round power of ten that is easy to read."""
    if log10_p >= -3.0:
        return f"of about {format_p(log10_p)}"
    exponent = math.floor(-log10_p)
    word = "below" if -log10_p > exponent else "at most"
    return f"{word} 10^-{exponent}"


def explain(null: Null, log10_p: float, alpha: float, rejects: bool) -> str:
    """One plain-English sentence: what ``null`` claims and whether it was rejected."""
    bound = "at most " if null is Null.INDEP else ""
    verdict = (
        "below the threshold alpha = {a}, so this hypothesis is rejected"
        if rejects
        else "not below the threshold alpha = {a}, so this hypothesis stands"
    ).format(a=format_alpha(alpha))
    return (
        f"{null}: if {NULL_CLAIM[null]}, {_NULL_EVIDENCE[null]} with probability "
        f"{bound}{format_p(log10_p)}, which is {verdict}."
    )
