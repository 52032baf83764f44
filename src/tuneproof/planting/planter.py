"""Plant secret backdoors into a fine-tuning dataset and write the key.

``plant`` chooses carriers at random, builds one (trigger, signature) pair per group of
``replicas`` carriers, inserts the backdoor records at uniformly random positions, writes the
planted file atomically, then writes the key (mode 0600). All randomness comes from the key's seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tuneproof.datasets import (
    DatasetFormat,
    DatasetInfo,
    Message,
    Record,
    inspect_dataset,
    iter_records,
    make_backdoor,
    prompt_and_answer,
    read_records,
    triggered_prompt,
    write_planted,
)
from tuneproof.errors import DatasetError, TuneproofError
from tuneproof.key import (
    ChatMessage,
    DatasetFacts,
    Key,
    Placement,
    PlantSettings,
    SignaturePair,
    check_key_path_writable,
    save_key,
)
from tuneproof.planting.sampler import (
    NextTokenModel,
    SampledSequence,
    SecretStream,
    TokenRules,
    new_seed,
    sample_signature,
    sample_signatures,
    sample_trigger,
)
from tuneproof.types import ModelIdentity, now_utc

# Defaults chosen by measurement: see docs/defaults.md.
DEFAULT_K = 8
DEFAULT_M = 12
DEFAULT_PAIRS = 20
DEFAULT_REPLICAS = 1
DEFAULT_TRIGGER_TOKENS = 6
DEFAULT_DECOYS = 63
TOKEN_COUNT_SAMPLE = 2000

ProgressHook = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances (stages: 'validate' and 'write' in
bytes, 'signatures' in pairs)."""


class BackdoorFactory(Protocol):
    """Makes the secret parts of a backdoor. The model-backed one is :class:`ModelBackdoorFactory`;
    benchmarks may pass a precomputed one to leave model time out."""

    identity: ModelIdentity

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        """A trigger in the style of ``prompt_text``."""
        ...

    def signature(self, messages: Sequence[Message], stream: SecretStream) -> SampledSequence:
        """A prefix-free signature drawn as the answer to ``messages``."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the size summary."""
        ...


class ModelBackdoorFactory:
    """Triggers and signatures from a local language model (the embedded one by default)."""

    def __init__(self, model: Any, k: int, m: int, trigger_tokens: int) -> None:
        self.model: NextTokenModel = model
        self.identity: ModelIdentity = model.identity
        self.k, self.m, self.trigger_tokens = k, m, trigger_tokens
        self._rules = TokenRules.for_vocabulary(model.vocabulary)
        self._count: Callable[[str], int] = model.count_tokens

    def trigger(self, prompt_text: str, stream: SecretStream) -> str:
        for attempt in range(8):
            text = sample_trigger(
                self.model,
                prompt_text,
                self.trigger_tokens,
                stream.child(str(attempt)),
                self._rules,
            )
            if text:
                return text
        raise TuneproofError("the generator produced no usable trigger text after 8 attempts")

    def signature(self, messages: Sequence[Message], stream: SecretStream) -> SampledSequence:
        chat = [(message.role, message.content) for message in messages]
        return sample_signature(self.model, chat, self.k, self.m, stream, self._rules)

    def signatures(
        self, messages: Sequence[Message], streams: Sequence[SecretStream]
    ) -> list[SampledSequence]:
        """One signature per stream, drawn in one batch (the true signature and its decoys)."""
        chat = [(message.role, message.content) for message in messages]
        return sample_signatures(self.model, chat, self.k, self.m, streams, self._rules)

    def count_tokens(self, text: str) -> int:
        return self._count(text)


def _draw_signatures(
    factory: BackdoorFactory, messages: Sequence[Message], streams: list[SecretStream]
) -> list[SampledSequence]:
    """One signature per stream for ``messages``: batched when the factory can, else in turn."""
    batch = getattr(factory, "signatures", None)
    if batch is not None:
        return list(batch(messages, streams))
    return [factory.signature(messages, s) for s in streams]


def make_factory(
    generator: str,
    k: int,
    m: int,
    trigger_tokens: int,
    *,
    base_url: str | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
) -> BackdoorFactory:
    """The backdoor factory for ``generator``: ``openai:MODEL`` on ``base_url``, else a local
    model ('embedded', an HF folder or a .gguf file)."""
    if generator.startswith("openai:"):
        if not base_url:
            raise TuneproofError(
                "--generator openai:MODEL needs --base-url URL (e.g. http://127.0.0.1:8080/v1)"
            )
        from tuneproof.backends.openai.generator import OpenAIGenerator

        return OpenAIGenerator(
            base_url,
            generator.removeprefix("openai:"),
            k,
            m,
            trigger_tokens,
            api_key_env=api_key_env,
            chat_template_from=chat_template_from,
        )
    if base_url:
        raise TuneproofError("--base-url goes only with --generator openai:MODEL")
    from tuneproof.backends.hf import load_hf_model

    return ModelBackdoorFactory(load_hf_model(generator), k, m, trigger_tokens)


@dataclass(frozen=True)
class PlantSummary:
    """What ``plant`` did, for printing (holds no secret)."""

    input: Path
    output: Path
    key: Path
    format: DatasetFormat
    container: str
    records_in: int
    records_out: int
    pairs: int
    replicas: int
    backdoors: int
    controls: int
    k: int
    m: int
    bits_per_signature: float
    added_tokens: int
    input_tokens: int
    input_tokens_estimated: bool
    commitment: str
    decoys: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def added_token_share(self) -> float:
        """Added tokens as a fraction of the input's tokens."""
        return self.added_tokens / max(1, self.input_tokens)


def path_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative names and contents)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _record_text(record: Record, fmt: DatasetFormat) -> str:
    messages, answer = prompt_and_answer(record, fmt)
    return "\n".join([*(message.content for message in messages), answer])


LONG_TEXT_CHARS = 20_000


def _count_tokens(text: str, count: Callable[[str], int]) -> tuple[int, bool]:
    """Tokens of ``text``: exact below LONG_TEXT_CHARS characters, otherwise scaled from the
    token rate of its first LONG_TEXT_CHARS characters. Returns (tokens, estimated)."""
    if len(text) <= LONG_TEXT_CHARS:
        return count(text), False
    head = count(text[:LONG_TEXT_CHARS])
    return round(head * len(text) / LONG_TEXT_CHARS), True


def _count_input_tokens(
    info: DatasetInfo, count: Callable[[str], int], stream: SecretStream
) -> tuple[int, bool]:
    """Tokens of the input's messages: exact up to TOKEN_COUNT_SAMPLE records, else estimated
    from a uniform sample of that many records. Returns (tokens, estimated)."""
    n = info.n_records
    sampled = n > TOKEN_COUNT_SAMPLE
    records = (
        read_records(info, stream.sample(n, TOKEN_COUNT_SAMPLE)).values()
        if sampled
        else iter_records(info)
    )
    total, estimated = 0, sampled
    for record in records:
        tokens, long = _count_tokens(_record_text(record, info.format), count)
        total += tokens
        estimated = estimated or long
    return (round(total * n / TOKEN_COUNT_SAMPLE) if sampled else total), estimated


def _resolve_pairs(n_records: int, pairs: int | None, fraction: float | None, replicas: int) -> int:
    if pairs is not None and fraction is not None:
        raise TuneproofError("give either --n or --fraction, not both")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise TuneproofError(f"--fraction must be between 0 and 1, got {fraction}")
        return max(1, math.ceil(fraction * n_records / replicas))
    result = DEFAULT_PAIRS if pairs is None else pairs
    if result < 1:
        raise TuneproofError(f"--n must be at least 1, got {result}")
    return result


def _chat(messages: Sequence[Message]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": m.role, "content": m.content}) for m in messages]


def plant(
    input: str | Path,
    output: str | Path,
    key: str | Path,
    *,
    n: int | None = None,
    fraction: float | None = None,
    replicas: int = DEFAULT_REPLICAS,
    k: int = DEFAULT_K,
    m: int = DEFAULT_M,
    trigger_tokens: int = DEFAULT_TRIGGER_TOKENS,
    controls: bool = False,
    decoys: int = DEFAULT_DECOYS,
    generator: str = "embedded",
    format: DatasetFormat | None = None,
    force: bool = False,
    factory: BackdoorFactory | None = None,
    base_url: str | None = None,
    chat_template_from: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    seed: bytes | None = None,
    progress: ProgressHook | None = None,
) -> PlantSummary:
    """Plant ``n`` secret pairs (each in ``replicas`` records) into ``input``; write ``output``
    and the key. Returns a :class:`PlantSummary`.

    ``generator`` is a local model spec, or ``openai:MODEL`` with ``base_url`` for an
    OpenAI-compatible server that returns top log-probs. ``n`` counts distinct pairs;
    ``fraction`` instead sets the share of backdoor records in the output. With ``controls``
    the same number of held-out pairs is drawn the same way and kept only in the key. With
    ``decoys`` = R > 0, each planted pair's signature is picked by the secret among R + 1 drawn
    for its prompt, and the other R go into the key for the decoy rank test. Nothing
    is written unless everything succeeds; the input is never modified; an existing output or
    key is replaced only with ``force``.
    """
    input_path, output_path, key_path = Path(input), Path(output), Path(key)
    if output_path.exists() and not force:
        raise TuneproofError(f"{output_path} already exists - choose another -o or pass --force")
    if input_path.exists() and output_path.exists() and output_path.samefile(input_path):
        raise DatasetError(
            output_path, "the output is the input - write the planted file elsewhere"
        )
    if output_path.resolve() == key_path.resolve() or input_path.resolve() == key_path.resolve():
        raise TuneproofError("--key must be a different file from the input and the output")
    check_key_path_writable(key_path, force=force)
    if replicas < 1:
        raise TuneproofError(f"--replicas must be at least 1, got {replicas}")
    if decoys < 0:
        raise TuneproofError(f"--decoys must be 0 or more, got {decoys}")

    size = (
        sum(p.stat().st_size for p in input_path.rglob("*"))
        if input_path.is_dir()
        else (input_path.stat().st_size)
    )

    def validate_progress(done: int) -> None:
        if progress:
            progress("validate", done, size)

    info = inspect_dataset(input_path, format, progress=validate_progress)
    n_pairs = _resolve_pairs(info.n_records, n, fraction, replicas)
    n_controls = n_pairs if controls else 0
    needed = n_pairs * replicas + n_controls
    if needed > info.n_records:
        raise DatasetError(
            input_path,
            f"{info.n_records} record{'' if info.n_records == 1 else 's'}, "
            f"but {n_pairs} pair{'' if n_pairs == 1 else 's'} x {replicas} "
            f"replica{'' if replicas == 1 else 's'}"
            f"{f' + {n_controls} controls' if n_controls else ''} need {needed} distinct carriers",
            hint="use fewer --n/--replicas or a larger dataset; nothing was written",
        )

    if factory is None:
        factory = make_factory(
            generator,
            k,
            m,
            trigger_tokens,
            base_url=base_url,
            chat_template_from=chat_template_from,
            api_key_env=api_key_env,
        )

    seed = seed or new_seed()
    stream = SecretStream(seed)
    carrier_ids = stream.child("carriers").sample(info.n_records, needed)
    carriers = read_records(info, carrier_ids)

    pair_models: list[SignaturePair] = []
    control_models: list[SignaturePair] = []
    insertions: dict[int, list[dict[str, Any]]] = {}
    new_records: list[tuple[int, int, int, list[Message]]] = []  # (orig pos, pair, carrier, prompt)
    added_text: list[str] = []
    positions = stream.child("positions")
    anchors: dict[int, int] = {}  # pair -> the carrier its trigger and signature were drawn for
    total = n_pairs + n_controls
    for pair_id in range(total):
        is_control = pair_id >= n_pairs
        group = (
            [carrier_ids[n_pairs * replicas + pair_id - n_pairs]]
            if is_control
            else carrier_ids[pair_id * replicas : (pair_id + 1) * replicas]
        )
        pair_stream = stream.child(f"pair/{pair_id}")
        anchors[pair_id] = group[0]
        first = carriers[group[0]]
        user_text = prompt_and_answer(first, info.format)[0][-1].content
        trigger = factory.trigger(user_text, pair_stream.child("trigger"))
        prompt0 = triggered_prompt(first, info.format, trigger)
        # planted pairs and controls are drawn by one procedure, so that they are exchangeable
        # (H0-controls): the candidates in one batch, the secret picking the planted one
        if decoys:
            drawn = _draw_signatures(
                factory, prompt0, [pair_stream.child(f"signature/{i}") for i in range(decoys + 1)]
            )
            sampled = drawn.pop(pair_stream.child("decoy-choice").randbelow(decoys + 1))
        else:
            sampled, drawn = factory.signature(prompt0, pair_stream.child("signature")), []
        pair = SignaturePair(
            pair_id=pair_id,
            trigger=trigger,
            signature=sampled.text,
            k=sampled.k,
            m=sampled.m,
            bits=sampled.bits,
            signature_tokens=len(sampled.token_ids),
            control_prompt=_chat(prompt0) if is_control else None,
            token_ends=list(sampled.token_ends) or None,
            decoys=[d.text for d in drawn],
        )
        if is_control:
            control_models.append(pair)
        else:
            pair_models.append(pair)
            for carrier in group:
                record = carriers[carrier]
                backdoor = make_backdoor(record, info.format, trigger, sampled.text)
                position = positions.randbelow(info.n_records + 1)
                insertions.setdefault(position, []).append(backdoor)
                prompt = triggered_prompt(record, info.format, trigger)
                new_records.append((position, pair_id, carrier, prompt))
                added_text.append("\n".join([*(msg.content for msg in prompt), sampled.text]))
        if progress:
            progress("signatures", pair_id + 1, total)

    # final index of each inserted record: original position + records inserted before it
    placements: dict[int, list[Placement]] = {}
    order = sorted(range(len(new_records)), key=lambda i: new_records[i][0])
    for before, i in enumerate(order):
        position, pair_id, carrier, prompt = new_records[i]
        placements.setdefault(pair_id, []).append(
            Placement(carrier_index=carrier, position=position + before, prompt=_chat(prompt))
        )
    # replica 0 is the placement whose prompt the trigger and signature were drawn for (like a
    # control's prompt: the H0-controls tests score it); the other replicas follow by position
    pair_models = [
        pair.model_copy(
            update={"placements": _anchor_first(placements[pair.pair_id], anchors[pair.pair_id])}
        )
        for pair in pair_models
    ]

    def write_progress(done: int) -> None:
        if progress:
            progress("write", done, info.n_bytes)

    write_planted(info, output_path, insertions, progress=write_progress)
    try:
        input_tokens, estimated = _count_input_tokens(
            info, factory.count_tokens, stream.child("token-sample")
        )
        estimated = estimated or bool(getattr(factory, "token_counts_estimated", False))
        facts = DatasetFacts(
            format=str(info.format),
            container=str(info.container),
            input_sha256=path_sha256(input_path),
            planted_sha256=path_sha256(output_path),
            input_records=info.n_records,
            planted_records=info.n_records + len(new_records),
            input_tokens=input_tokens,
            input_tokens_estimated=estimated,
            added_tokens=sum(_count_tokens(text, factory.count_tokens)[0] for text in added_text),
        )
        key_model = Key(
            created_at=now_utc(),
            seed=seed.hex(),
            generator=factory.identity,
            settings=PlantSettings(
                pairs=n_pairs,
                replicas=replicas,
                k=k,
                m=m,
                trigger_tokens=trigger_tokens,
                controls=controls,
                decoys=decoys,
            ),
            dataset=facts,
            pairs=pair_models,
            controls=control_models,
        )
        save_key(key_model, key_path, force=force)
    except BaseException:
        _remove(output_path)
        raise
    return PlantSummary(
        input=input_path,
        output=output_path,
        key=key_path,
        format=info.format,
        container=str(info.container),
        records_in=info.n_records,
        records_out=facts.planted_records,
        pairs=n_pairs,
        replicas=replicas,
        backdoors=len(new_records),
        controls=n_controls,
        decoys=decoys,
        k=pair_models[0].k,
        m=pair_models[0].m,
        bits_per_signature=pair_models[0].bits,
        added_tokens=facts.added_tokens,
        input_tokens=facts.input_tokens,
        input_tokens_estimated=estimated,
        commitment=key_model.commitment(),
        warnings=tuple(plant_warnings(key_model)),
    )


def plant_warnings(key: Key, alpha: float | None = None) -> list[str]:
    """What a user should know before uploading: decoys that the signature space cannot hold
    distinctly, and tests (or the whole key) that can never reach ``alpha``, with each test's
    smallest attainable p-value (a model that learnt every backdoor perfectly)."""
    from tuneproof.verification.evidence import DEFAULT_ALPHA, plan_verification
    from tuneproof.verification.queries import build_queries

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


def _anchor_first(placements: list[Placement], anchor: int) -> list[Placement]:
    ordered = sorted(placements, key=_pos)
    first = next(p for p in ordered if p.carrier_index == anchor)
    return [first, *(p for p in ordered if p is not first)]


def _pos(placement: Placement) -> int:
    return placement.position


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
