"""The draw of a plant run: the (trigger, signature) pair of each group of carriers (chosen by
:mod:`tuneproof.planting.carriers`), the backdoor records, and where they go.

Every draw comes from a named child of the run's secret stream ('carriers', 'positions',
'pair/<i>'), so that the key's seed alone reproduces it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneproof.datasets import Message, Record, make_backdoor, prompt_and_answer, triggered_prompt
from tuneproof.key import ChatMessage, Placement, SignaturePair
from tuneproof.planting.carriers import NO_TRIGGER, Carriers
from tuneproof.planting.factory import BackdoorFactory
from tuneproof.planting.secret import SecretStream
from tuneproof.planting.triggers import NoTriggerWord


def _chat(messages: Sequence[Message]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": m.role, "content": m.content}) for m in messages]


@dataclass
class Backdoors:
    """What the draw made: the key's pairs (not yet placed) and controls, the backdoor records by
    insertion position, and for each inserted record (position, pair, carrier, prompt)."""

    pairs: list[SignaturePair] = field(default_factory=list)
    controls: list[SignaturePair] = field(default_factory=list)
    insertions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    inserted: list[tuple[int, int, int, list[Message]]] = field(default_factory=list)
    added_text: list[str] = field(default_factory=list)
    anchors: dict[int, int] = field(default_factory=dict)  # pair -> the carrier it was drawn for


def draw_backdoors(
    factory: BackdoorFactory,
    carriers: Carriers,
    decoys: int,
    stream: SecretStream,
    progress: Callable[[int], None] | None = None,
) -> Backdoors:
    """Draw every pair and control in turn; each planted pair's records go to random positions
    (the 'positions' stream, drawn in pair and carrier order). ``progress(done)`` counts the
    pairs drawn."""
    fmt, out = carriers.info.format, Backdoors()
    positions = stream.child("positions")
    total = carriers.pairs + carriers.controls
    for pair_id in range(total):
        pair = _draw_pair(factory, carriers, pair_id, decoys, stream.child(f"pair/{pair_id}"))
        group = carriers.group(pair_id)  # after the draw, which may have replaced its anchor
        out.anchors[pair_id] = group[0]
        if pair.control_prompt is not None:
            out.controls.append(pair)
        else:
            out.pairs.append(pair)
            for carrier in group:
                record = carriers.records[carrier]
                position = positions.randbelow(carriers.info.n_records + 1)
                backdoor = make_backdoor(record, fmt, pair.trigger, pair.signature)
                out.insertions.setdefault(position, []).append(backdoor)
                prompt = triggered_prompt(record, fmt, pair.trigger)
                out.inserted.append((position, pair_id, carrier, prompt))
                out.added_text.append("\n".join([*(m.content for m in prompt), pair.signature]))
        if progress:
            progress(pair_id + 1)
    return out


def _draw_pair(
    factory: BackdoorFactory,
    carriers: Carriers,
    pair_id: int,
    decoys: int,
    pair_stream: SecretStream,
) -> SignaturePair:
    """One pair (or control): a trigger for its first carrier's prompt, then its signature.

    Planted pairs and controls are drawn by one procedure, so that they are exchangeable
    (H0-controls): with decoys, the candidates in one batch and the secret picking the planted
    one."""
    fmt, is_control = carriers.info.format, pair_id >= carriers.pairs
    first, trigger = _anchor_trigger(factory, carriers, pair_id, pair_stream)
    prompt = triggered_prompt(first, fmt, trigger)
    if decoys:
        streams = [pair_stream.child(f"signature/{i}") for i in range(decoys + 1)]
        drawn = list(factory.signatures(prompt, streams))
        sampled = drawn.pop(pair_stream.child("decoy-choice").randbelow(decoys + 1))
    else:
        sampled, drawn = factory.signature(prompt, pair_stream.child("signature")), []
    return SignaturePair(
        pair_id=pair_id,
        trigger=trigger,
        signature=sampled.text,
        k=sampled.k,
        m=sampled.m,
        bits=sampled.bits,
        signature_tokens=len(sampled.token_ids),
        control_prompt=_chat(prompt) if is_control else None,
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
    """The planted pairs with their placements: the final index of each inserted record is its
    original position plus the records inserted before it. Replica 0 is the placement whose
    prompt the trigger and signature were drawn for (like a control's prompt: the H0-controls
    tests score it); the other replicas follow by position."""
    placements: dict[int, list[Placement]] = {}
    inserted = backdoors.inserted
    order = sorted(range(len(inserted)), key=lambda i: inserted[i][0])
    for before, i in enumerate(order):
        position, pair_id, carrier, prompt = inserted[i]
        placements.setdefault(pair_id, []).append(
            Placement(carrier_index=carrier, position=position + before, prompt=_chat(prompt))
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
