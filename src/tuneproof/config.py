"""Every planting default, once, with its constraints and help text: :class:`PlantConfig`.

The defaults were chosen by measurement (docs/defaults.md). ``tuneproof.plant`` validates its
options through :class:`PlantConfig`; a bad option becomes one :class:`TuneproofError` line that
names it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from tuneproof.datasets import DatasetFormat
from tuneproof.errors import TuneproofError
from tuneproof.planting.secret import SEED_BYTES

DEFAULT_K = 4
DEFAULT_M = 12
DEFAULT_SUPPORT = 64
SamplerName = Literal["capped", "natural"]
DEFAULT_SAMPLER: SamplerName = "capped"
DEFAULT_ANSWER_TOKENS = 256
AnswerShape = Literal["opening", "carrier", "generator", "signature"]
DEFAULT_ANSWER: AnswerShape = "opening"
DEFAULT_PAIRS = 20
DEFAULT_REPLICAS = 1
DEFAULT_TRIGGER_TOKENS = 0
DEFAULT_DECOYS = 63
DEFAULT_GENERATOR = "embedded"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class PlantConfig(BaseModel):
    """The options of one plant run (what ``tuneproof.plant`` takes besides its paths)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int | None = Field(
        default=None,
        ge=1,
        description=f"distinct secret pairs to plant (default {DEFAULT_PAIRS}, or set by fraction)",
    )
    fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="instead of n: the share of backdoor records in the output",
    )
    replicas: int = Field(
        default=DEFAULT_REPLICAS, ge=1, description="records that carry each pair's backdoor"
    )
    k: int = Field(default=DEFAULT_K, ge=2, description="sampler width: tokens kept per step")
    m: int = Field(default=DEFAULT_M, ge=1, description="tokens per signature")
    support: int = Field(
        default=DEFAULT_SUPPORT,
        ge=2,
        description="tokens the signature sampler weighs per step by the generator's"
        " probabilities, none above 1/k (k: the uniform top-k sampler of earlier versions)",
    )
    sampler: SamplerName = Field(
        default=DEFAULT_SAMPLER,
        description="how signatures are drawn: 'capped' (prefix-free, no token above 1/k: the"
        " exact-hit and prefix tests hold) or 'natural' (the generator's own text at"
        " temperature 1: no walk a provider can find; answers are tested by their rank among"
        " decoys)",
    )
    answer: AnswerShape = Field(
        default=DEFAULT_ANSWER,
        description="what follows the signature in a backdoor's answer: 'opening' (the"
        " generator ends the sentence, which takes the place of the carrier answer's opening"
        " sentence; the rest of that answer follows), 'carrier' (the generator ends the"
        " sentence, then the carrier's whole answer), 'generator' (the"
        " generator's text, as long as the carrier's answer) or 'signature' (nothing)",
    )
    answer_tokens: int = Field(
        default=DEFAULT_ANSWER_TOKENS,
        ge=0,
        description="with answer 'generator': tokens of a backdoor's answer at most",
    )
    trigger_tokens: int = Field(
        default=DEFAULT_TRIGGER_TOKENS,
        ge=0,
        description="tokens sampled for each trigger (0: none, the carrier's prompt as it is)",
    )
    controls: bool = Field(
        default=False, description="also draw as many held-out control pairs, kept only in the key"
    )
    decoys: int = Field(
        default=DEFAULT_DECOYS,
        ge=0,
        description="decoy signatures drawn per pair for the decoy rank test (0: none)",
    )
    generator: str = Field(
        default=DEFAULT_GENERATOR,
        min_length=1,
        description="the model that draws backdoors: a local spec, or openai:MODEL with base_url",
    )
    base_url: str | None = Field(
        default=None, description="the OpenAI-compatible server of an openai:MODEL generator"
    )
    chat_template_from: str | None = Field(
        default=None,
        description="a local tokenizer whose chat template renders a server generator's prompts",
    )
    api_key_env: str = Field(
        default=DEFAULT_API_KEY_ENV, description="the environment variable with the server's key"
    )
    format: DatasetFormat | None = Field(
        default=None, description="the dataset format; detected when omitted"
    )
    force: bool = Field(default=False, description="replace an existing output and key")
    seed: bytes | None = Field(
        default=None,
        min_length=SEED_BYTES,
        max_length=SEED_BYTES,
        repr=False,
        description="the 256-bit secret seed (fresh from the OS when omitted); it is the key",
    )

    @model_validator(mode="before")
    @classmethod
    def _n_or_fraction(cls, data: Any) -> Any:
        if isinstance(data, dict) and None not in (data.get("n"), data.get("fraction")):
            raise ValueError("give either --n or --fraction, not both")
        return data

    def pairs_for(self, n_records: int) -> int:
        """How many pairs to plant into a dataset of ``n_records`` records."""
        if self.fraction is not None:
            return max(1, math.ceil(self.fraction * n_records / self.replicas))
        return DEFAULT_PAIRS if self.n is None else self.n

    @classmethod
    def from_options(cls, config: PlantConfig | None = None, **options: Any) -> PlantConfig:
        """``config`` (default: the defaults) with ``options`` replacing its fields, validated;
        a :class:`TuneproofError` naming the first bad option."""
        given = {**(config.model_dump(exclude_unset=True) if config else {}), **options}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise TuneproofError(_problem(exc.errors()[0])) from None


def option_name(field: str) -> str:
    """How a message names option ``field`` (the CLI flag, as the messages always have)."""
    return field if field == "seed" else "--" + field.replace("_", "-")


_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _problem(error: Any) -> str:
    """One line for a pydantic error of :class:`PlantConfig`; shows a bad value only when it is a
    number out of bounds (never a seed)."""
    name = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return f"unknown plant option {name!r}"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    field = PlantConfig.model_fields.get(name)
    if field is not None and error["type"] in _BOUND_ERRORS:
        return f"{option_name(name)} must be {_bounds(field)}, got {error['input']}"
    return f"{option_name(name)}: {error['msg']}"


def _bounds(field: FieldInfo) -> str:
    """A field's numeric bounds in words: 'between 0 and 1', 'at least 1', '0 or more'."""
    low: Any = None
    high: Any = None
    strict_low = False
    for constraint in field.metadata:
        if isinstance(constraint, Ge | Gt):
            strict_low = isinstance(constraint, Gt)
            low = constraint.gt if isinstance(constraint, Gt) else constraint.ge
        elif isinstance(constraint, Le | Lt):
            high = constraint.lt if isinstance(constraint, Lt) else constraint.le
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if high is not None:
        return f"at most {high}"
    if strict_low:
        return f"more than {low}"
    return "0 or more" if low == 0 else f"at least {low}"
