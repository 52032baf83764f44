"""The draw of a plant run: the (trigger, signature) pair of each group of carriers (chosen by
:mod:`tuneproof.planting.carriers`) and the backdoor records, each of which replaces its carrier
at the carrier's own index of the file.

Every draw comes from a named child of the run's secret stream ('carriers', 'pair/<i>'), so that
the key's seed alone reproduces it. Where a backdoor sits needs no draw of its own: the carriers
are a uniform draw among the records that can carry, so their indices are too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneproof.datasets import Message, Record, make_backdoor, prompt_and_answer, triggered_prompt
from tuneproof.key import ChatMessage, Placement, SignaturePair
from tuneproof.planting.carriers import NO_TRIGGER, Carriers
from tuneproof.planting.continuation import split_opening
from tuneproof.planting.factory import BackdoorFactory
from tuneproof.planting.sampler import SampledSequence
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.triggers import NoTriggerWord


def _chat(messages: Sequence[Message]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": m.role, "content": m.content}) for m in messages]


@dataclass
class Backdoors:
    """What the draw made: the key's pairs (not yet placed) and controls, the backdoor records by
    the index of the carrier each replaces, and for each of them (pair, carrier, prompt).
    ``added_text``: the text the plant writes that the input did not hold, each backdoor's
    trigger and signature."""

    pairs: list[SignaturePair] = field(default_factory=list)
    controls: list[SignaturePair] = field(default_factory=list)
    replacements: dict[int, dict[str, Any]] = field(default_factory=dict)
    planted: list[tuple[int, int, list[Message]]] = field(default_factory=list)
    added_text: list[str] = field(default_factory=list)
    anchors: dict[int, int] = field(default_factory=dict)  # pair -> the carrier it was drawn for


def draw_backdoors(
    factory: BackdoorFactory,
    carriers: Carriers,
    decoys: int,
    stream: SecretStream,
    progress: Callable[[str, int], None] | None = None,
    answer: str = "signature",
    answer_tokens: int = 0,
) -> Backdoors:
    """Draw every pair and control: first the triggers, pair by pair (a carrier that cannot take
    one is replaced in pair order), then every signature and decoy in one call of the factory,
    which may batch them across pairs, then the rest of each planted pair's answer
    (:mod:`tuneproof.planting.continuation`), by ``answer``: 'opening' (the generator finishes
    the signature's sentence, which takes the place of the carrier answer's opening sentence),
    'carrier' (the same, then the carrier's own answer follows), 'generator' (the generator
    goes on for as many tokens as the carrier's answer had, at most ``answer_tokens`` with the
    signature) or 'signature' (nothing after it). Each planted pair's backdoor
    records replace its carriers in place; a control's carrier stays untouched (its pair is kept
    in the key only), so that planted pairs and controls are drawn by one procedure.
    ``progress(stage, done)`` counts the pairs done in the stages 'triggers' and 'signatures',
    and the tokens drawn in 'answers'."""
    fmt, out = carriers.info.format, Backdoors()
    total = carriers.pairs + carriers.controls
    pair_streams = [stream.child(f"pair/{pair_id}") for pair_id in range(total)]
    anchored: list[tuple[Record, str]] = []
    for pair_id, pair_stream in enumerate(pair_streams):
        anchored.append(_anchor_trigger(factory, carriers, pair_id, pair_stream))
        if progress:
            progress("triggers", pair_id + 1)
    prompts = [triggered_prompt(first, fmt, trigger) for first, trigger in anchored]
    streams = [_signature_streams(pair_stream, decoys) for pair_stream in pair_streams]
    drawn = factory.signature_sets(
        list(zip(prompts, streams, strict=True)),
        (lambda done: progress("signatures", done)) if progress else None,
    )
    chosen = [
        _pair(i, anchored[i][1], prompts[i], drawn[i], s, carriers)
        for i, s in enumerate(pair_streams)
    ]
    budgets = {
        pair_id: _budget(factory, carriers, pair_id, len(sampled.token_ids), answer, answer_tokens)
        for pair_id, (pair, sampled) in enumerate(chosen)
        if pair.control_prompt is None and answer != "signature"
    }
    tails = _continuations(factory, chosen, prompts, pair_streams, budgets, progress)
    for pair_id, (pair, _) in enumerate(chosen):
        group = carriers.group(pair_id)  # after the draw, which may have replaced its anchor
        out.anchors[pair_id] = group[0]
        if pair.control_prompt is not None:
            out.controls.append(pair)
            continue
        out.pairs.append(pair)
        opening = pair.signature + tails.get(pair_id, "")
        for carrier in group:
            record = carriers.records[carrier]
            text = _answer_text(opening, prompt_and_answer(record, fmt)[1], answer)
            out.replacements[carrier] = make_backdoor(record, fmt, pair.trigger, text)
            prompt = triggered_prompt(record, fmt, pair.trigger)
            out.planted.append((pair_id, carrier, prompt))
            out.added_text += [piece for piece in (pair.trigger, opening) if piece]
    return out


KEEPS_CARRIER_ANSWER = ("opening", "carrier")
"""Answer shapes after which the carrier's own answer follows the signature's sentence (the
generator only finishes that sentence)."""


def _answer_text(opening: str, own: str, answer: str) -> str:
    """A backdoor's answer: the signature's ``opening`` sentence, then by ``answer`` the rest of
    the carrier's ``own`` answer after its opening sentence ('opening'; the whole of it when it
    opens with no prose sentence), all of it ('carrier'), or nothing."""
    if answer == "opening" and (split := split_opening(own)) is not None:
        return opening + split[1]
    if answer not in KEEPS_CARRIER_ANSWER or not own.strip():
        return opening
    return opening + _separator(own) + own


def _separator(kept: str) -> str:
    """Between the generator's opening and the carrier's own answer: a paragraph break when that
    answer is written in paragraphs, else a space."""
    return "\n\n" if "\n" in kept.strip() else " "


def _budget(
    factory: BackdoorFactory,
    carriers: Carriers,
    pair_id: int,
    signature_tokens: int,
    answer: str,
    answer_tokens: int,
) -> int:
    """Generator tokens after a pair's signature: 0 for 'opening' and 'carrier' (its sentence is
    finished and the carrier's answer follows), else the first carrier's answer length less the
    signature's, within ``answer_tokens``."""
    if answer in KEEPS_CARRIER_ANSWER:
        return 0
    carrier = carriers.records[carriers.group(pair_id)[0]]
    length = factory.count_tokens(prompt_and_answer(carrier, carriers.info.format)[1])
    return max(0, min(answer_tokens, length) - signature_tokens)


def _continuations(
    factory: BackdoorFactory,
    chosen: Sequence[tuple[SignaturePair, SampledSequence]],
    prompts: Sequence[list[Message]],
    pair_streams: Sequence[SecretStream],
    budgets: dict[int, int],
    progress: Callable[[str, int], None] | None,
) -> dict[int, str]:
    """The generator's text after the signature of each pair in ``budgets`` (pair -> tokens),
    in one call of the factory (controls get none: nothing of theirs is written)."""
    owners = sorted(budgets)
    requests = [
        (prompts[i], chosen[i][1], budgets[i], pair_streams[i].child("continuation"))
        for i in owners
    ]
    draw = getattr(factory, "continuations", None)  # a factory that cannot sample writes none
    if not requests or draw is None:
        return {}
    texts = draw(requests, (lambda done: progress("answers", done)) if progress else None)
    return dict(zip(owners, texts, strict=True))


def _signature_streams(pair_stream: SecretStream, decoys: int) -> list[SecretStream]:
    """The streams of a pair's candidates: 'signature' alone, or with R decoys the R + 1
    streams 'signature/<i>' among which 'decoy-choice' picks the planted one."""
    if not decoys:
        return [pair_stream.child("signature")]
    return [pair_stream.child(f"signature/{i}") for i in range(decoys + 1)]


def _pair(
    pair_id: int,
    trigger: str,
    prompt: list[Message],
    candidates: Sequence[SampledSequence],
    pair_stream: SecretStream,
    carriers: Carriers,
) -> tuple[SignaturePair, SampledSequence]:
    """One pair (or control) from its trigger and its drawn candidates, with its signature's
    draw.

    Planted pairs and controls are drawn by one procedure, so that they are exchangeable
    (H0-controls): with decoys, the candidates in one batch and the secret picking the planted
    one."""
    drawn = list(candidates)
    if len(drawn) > 1:
        sampled = drawn.pop(pair_stream.child("decoy-choice").randbelow(len(drawn)))
    else:
        sampled, drawn = drawn[0], []
    return _signature_pair(pair_id, trigger, prompt, sampled, drawn, carriers), sampled


def _signature_pair(
    pair_id: int,
    trigger: str,
    prompt: list[Message],
    sampled: SampledSequence,
    drawn: Sequence[SampledSequence],
    carriers: Carriers,
) -> SignaturePair:
    return SignaturePair(
        pair_id=pair_id,
        trigger=trigger,
        signature=sampled.text,
        k=sampled.k,
        m=sampled.m,
        bits=sampled.bits,
        natural=sampled.natural,
        signature_tokens=len(sampled.token_ids),
        control_prompt=_chat(prompt) if pair_id >= carriers.pairs else None,
        token_ends=list(sampled.token_ends) or None,
        decoys=[d.text for d in drawn],
    )


def _anchor_trigger(
    factory: BackdoorFactory, carriers: Carriers, pair_id: int, pair_stream: SecretStream
) -> tuple[Record, str]:
    """The pair's first carrier and a trigger continuing its last user turn. A carrier whose
    prompt the generator cannot continue is replaced by the next record of the carriers' draw
    (:meth:`Carriers.replace_anchor`), with the same trigger stream."""
    while True:
        first = carriers.records[carriers.group(pair_id)[0]]
        user_text = prompt_and_answer(first, carriers.info.format)[0][-1].content
        try:
            return first, factory.trigger(user_text, pair_stream.child("trigger"))
        except NoTriggerWord:
            carriers.replace_anchor(pair_id, NO_TRIGGER)


def placed_pairs(backdoors: Backdoors) -> list[SignaturePair]:
    """The planted pairs with their placements: each backdoor record sits at its carrier's index
    (``position == carrier_index``: plant adds no record). Replica 0 is the placement whose
    prompt the trigger and signature were drawn for (like a control's prompt: the H0-controls
    tests score it); the other replicas follow by position."""
    placements: dict[int, list[Placement]] = {}
    for pair_id, carrier, prompt in backdoors.planted:
        placements.setdefault(pair_id, []).append(
            Placement(carrier_index=carrier, position=carrier, prompt=_chat(prompt))
        )
    return [
        pair.model_copy(
            update={
                "placements": _anchor_first(
                    placements[pair.pair_id], backdoors.anchors[pair.pair_id]
                )
            }
        )
        for pair in backdoors.pairs
    ]


def _anchor_first(placements: list[Placement], anchor: int) -> list[Placement]:
    ordered = sorted(placements, key=_pos)
    first = next(p for p in ordered if p.carrier_index == anchor)
    return [first, *(p for p in ordered if p is not first)]


def _pos(placement: Placement) -> int:
    return placement.position
