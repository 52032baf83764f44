"""Plant secret backdoors into a fine-tuning dataset and write the key.

``plant`` runs in named steps: validate the options and paths, choose the carriers at random,
draw one (trigger, signature) pair per group of ``replicas`` carriers (and the controls), write
the planted file atomically with each backdoor record in place of its carrier (same index, same
record count; every other record byte for byte), then write the key (mode 0600) and return a
summary. All randomness comes from the key's seed.

Replacing rather than inserting is what keeps the backdoors out of reach of the simplest filter a
provider can run: an inserted copy of a carrier leaves two records of which one prompt extends
the other. With the default ``answer='opening'`` the carriers keep most of their answers: each
backdoor's answer opens with the signature, the generator finishes that sentence in place of the
carrier answer's opening sentence, and the rest of the carrier's answer follows
(:mod:`tuneproof.planting.backdoors`), so the price is one opening sentence in ``n * replicas``
records (20 by default). With the default ``trigger_tokens=0`` the prompt is the carrier's own,
unchanged; ``answer='signature'`` with triggers is the plant of earlier versions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneproof.config import PlantConfig
from tuneproof.datasets import (
    DatasetFormat,
    DatasetInfo,
    check_planted_output,
    inspect_dataset,
    write_planted,
)
from tuneproof.errors import TuneproofError
from tuneproof.key import (
    Key,
    PlantSettings,
    check_key_path_writable,
    save_key,
)
from tuneproof.planting.backdoors import Backdoors, draw_backdoors, placed_pairs
from tuneproof.planting.carriers import Carriers, choose_carriers
from tuneproof.planting.continuation import SENTENCE_SLACK
from tuneproof.planting.factory import BackdoorFactory, make_factory
from tuneproof.planting.facts import dataset_facts
from tuneproof.planting.secret import SecretStream, new_seed
from tuneproof.types import Progress, now_utc

# progress(stage, done, total) is called as work advances: stages 'validate' and 'write' in
# bytes, 'triggers' and 'signatures' in pairs


@dataclass(frozen=True)
class PlantSummary:
    """What ``plant`` did, for printing (holds no secret)."""

    input: Path
    output: Path
    key: Path
    format: DatasetFormat
    container: str
    records: int
    """Records in the input, and in the planted file (plant adds none)."""
    pairs: int
    replicas: int
    backdoors: int
    """Records of the planted file that now carry a backdoor (each in place of its carrier)."""
    controls: int
    k: int
    m: int
    bits_per_signature: float
    added_tokens: int
    """Generator tokens of the text plant wrote (each backdoor's trigger and signature)."""
    input_tokens: int
    input_tokens_estimated: bool
    commitment: str
    decoys: int = 0
    warnings: tuple[str, ...] = ()
    carriers_skipped: int = 0
    """Drawn records passed over for others: tools, non-text content, no trigger word."""
    answer: str = "signature"
    """What follows the signature in a backdoor's answer (``PlantConfig.answer``)."""

    @property
    def added_token_share(self) -> float:
        """Added tokens as a fraction of the input's tokens."""
        return self.added_tokens / max(1, self.input_tokens)


def plant(
    input: str | Path,
    output: str | Path,
    key: str | Path,
    *,
    config: PlantConfig | None = None,
    factory: BackdoorFactory | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> PlantSummary:
    """Plant ``n`` secret pairs (each in ``replicas`` records) into ``input``; write ``output``
    and the key. Returns a :class:`PlantSummary`.

    The options are the fields of :class:`tuneproof.config.PlantConfig` (``config``, with
    ``options`` replacing its fields); a bad one raises a :class:`TuneproofError` naming it.
    ``generator`` is a local model spec, or ``openai:MODEL`` with ``base_url`` for an
    OpenAI-compatible server that returns top log-probs; ``factory`` replaces the generator.
    ``n`` counts distinct pairs; ``fraction`` instead sets the share of records that carry a
    backdoor. Each backdoor record replaces its carrier in place, so the output has as many
    records as the input and the ``n * replicas`` carriers give up their answers. With
    ``controls`` the same number of held-out pairs is drawn the same way and kept only in the key
    (their carriers stay untouched). With ``decoys`` = R > 0, each planted pair's signature is
    picked by the secret among R + 1 drawn for its prompt, and the other R go into the key for
    the decoy rank test. Nothing is written unless everything succeeds; the input is never
    modified; an existing output or key is replaced only with ``force``.
    """
    settings = PlantConfig.from_options(config, **options)
    input_path, output_path, key_path = Path(input), Path(output), Path(key)
    _check_paths(input_path, output_path, key_path, force=settings.force)
    info = _inspect(input_path, settings, progress)
    seed = settings.seed or new_seed()
    stream = SecretStream(seed)
    carriers = choose_carriers(info, settings, stream)
    if factory is None:
        factory = _make_factory(settings)
    total = carriers.pairs + carriers.controls
    stages = {name: _stage(progress, name, total) for name in ("triggers", "signatures")}
    budget = settings.answer_tokens if settings.answer == "generator" else 0
    stages["answers"] = _stage(progress, "answers", budget + SENTENCE_SLACK)
    backdoors = draw_backdoors(
        factory,
        carriers,
        settings.decoys,
        stream,
        lambda name, done: stages[name](done),
        answer=settings.answer,
        answer_tokens=settings.answer_tokens,
    )
    written = _stage(progress, "write", info.n_bytes)
    write_planted(info, output_path, backdoors.replacements, progress=written)
    try:
        files = (input_path, output_path)
        key_model = _make_key(seed, settings, carriers, factory, backdoors, stream, files)
        save_key(key_model, key_path, force=settings.force)
    except BaseException:
        _remove(output_path)
        raise
    return _summary(input_path, output_path, key_path, carriers, settings.decoys, key_model)


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[int], None]:
    """``progress`` for one stage: done -> progress(stage, done, total)."""

    def report(done: int) -> None:
        if progress:
            progress(stage, done, total)

    return report


def _make_factory(settings: PlantConfig) -> BackdoorFactory:
    return make_factory(
        settings.generator,
        settings.k,
        settings.m,
        settings.trigger_tokens,
        support=settings.support,
        sampler=settings.sampler,
        base_url=settings.base_url,
        chat_template_from=settings.chat_template_from,
        api_key_env=settings.api_key_env,
    )


def _make_key(
    seed: bytes,
    settings: PlantConfig,
    carriers: Carriers,
    factory: BackdoorFactory,
    backdoors: Backdoors,
    stream: SecretStream,
    files: tuple[Path, Path],
) -> Key:
    """The key of the run, once the planted file is written: it records the hashes of ``files``
    (input, output)."""
    facts = dataset_facts(
        carriers.info,
        files,
        factory,
        backdoors.added_text,
        stream.child("token-sample"),
    )
    return Key(
        created_at=now_utc(),
        seed=seed.hex(),
        generator=factory.identity,
        settings=_key_settings(settings, carriers, factory),
        dataset=facts,
        pairs=placed_pairs(backdoors),
        controls=backdoors.controls,
    )


def _check_paths(input_path: Path, output_path: Path, key_path: Path, *, force: bool) -> None:
    """Refuse, before any work (the input is not read yet, the generator not loaded), every
    output that could not be written: the planted file or folder
    (:func:`tuneproof.datasets.check_planted_output`) and the key."""
    if output_path.resolve() == key_path.resolve() or input_path.resolve() == key_path.resolve():
        raise TuneproofError("--key must be a different file from the input and the output")
    check_planted_output(input_path, output_path, force=force)
    check_key_path_writable(key_path, force=force)


def _inspect(input_path: Path, settings: PlantConfig, progress: Progress | None) -> DatasetInfo:
    """Detect the format and validate every record (progress in bytes)."""
    size = (
        sum(p.stat().st_size for p in input_path.rglob("*"))
        if input_path.is_dir()
        else input_path.stat().st_size
    )
    return inspect_dataset(input_path, settings.format, progress=_stage(progress, "validate", size))


def _key_settings(
    settings: PlantConfig, carriers: Carriers, factory: BackdoorFactory
) -> PlantSettings:
    # what the factory drew with (a factory passed in may differ from the options)
    return PlantSettings(
        pairs=carriers.pairs,
        replicas=settings.replicas,
        k=getattr(factory, "k", settings.k),
        m=getattr(factory, "m", settings.m),
        trigger_tokens=getattr(factory, "trigger_tokens", settings.trigger_tokens),
        controls=settings.controls,
        decoys=settings.decoys,
        support=getattr(factory, "support", settings.support),
        sampler=getattr(factory, "sampler", settings.sampler),
        answer=settings.answer,
        answer_tokens=settings.answer_tokens,
    )


def _summary(
    input_path: Path, output_path: Path, key_path: Path, carriers: Carriers, decoys: int, key: Key
) -> PlantSummary:
    first, facts = key.pairs[0], key.dataset
    return PlantSummary(
        input=input_path,
        output=output_path,
        key=key_path,
        format=carriers.info.format,
        container=str(carriers.info.container),
        records=facts.planted_records,
        pairs=carriers.pairs,
        replicas=carriers.replicas,
        backdoors=key.n_backdoors,
        controls=carriers.controls,
        decoys=decoys,
        k=first.k,
        m=first.m,
        bits_per_signature=first.bits,
        added_tokens=facts.added_tokens,
        input_tokens=facts.input_tokens,
        input_tokens_estimated=facts.input_tokens_estimated,
        commitment=key.commitment(),
        carriers_skipped=sum(carriers.pool.skipped.values()),
        answer=key.settings.answer or "signature",
        warnings=(note,) if (note := carriers.pool.note()) else (),
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
