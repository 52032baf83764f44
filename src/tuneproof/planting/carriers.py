"""The records that carry backdoors: drawn by the secret stream, uniformly among those that can.

The 'carriers' stream puts the input's records in a uniformly random order
(:meth:`tuneproof.planting.secret.SecretStream.permutation`). The carriers are the first records
of that order that can carry a backdoor: whose prompt the key holds exactly
(:func:`tuneproof.datasets.carrier_problem`: no tools, tool calls, tool turns or non-text content)
and, found only while drawing, whose prompt the generator can continue with a trigger
(:class:`tuneproof.planting.triggers.NoTriggerWord`). A record that cannot is passed over for the
next one in the order, so that the run stays reproducible from the seed; the first in the order
of a fixed set of records is uniform over that set, so the carriers stay a uniform draw among the
records that can carry. When the order runs out the plant stops with a :class:`DatasetError`
that counts what was skipped and why.

Records are read in batches (one read per batch: a parquet file is read in one pass per batch):
the first batch is exactly the carriers needed, the next ones sized by the share of usable
records seen so far.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, deque
from dataclasses import dataclass, field

from tuneproof.config import PlantConfig
from tuneproof.datasets import DatasetInfo, Record, carrier_problem, read_records
from tuneproof.errors import DatasetError
from tuneproof.planting.secret import SecretStream

NO_TRIGGER = "whose last user turn the generator cannot continue with a word (a trigger)"
MIN_SHARE = 1 / 16
"""The smallest share of usable records a batch size assumes (bounds the number of reads)."""
CARRIERS_DOC = "docs/datasets.md#which-records-carry-backdoors"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class CarrierPool:
    """The input's records in the order of the carriers stream, read in batches; :meth:`take`
    passes over those that cannot carry and counts them in :attr:`skipped` (by reason)."""

    def __init__(self, info: DatasetInfo, stream: SecretStream, need: str) -> None:
        self.info, self._need = info, need
        self._order = stream.permutation(info.n_records)
        self._queue: deque[tuple[int, Record, str | None]] = deque()
        self._read = self._usable = 0
        self.skipped: Counter[str] = Counter()

    def take(self, count: int) -> list[tuple[int, Record]]:
        """The next ``count`` records that can carry, as (index, record), in draw order; a
        :class:`DatasetError` when fewer are left."""
        out: list[tuple[int, Record]] = []
        while len(out) < count:
            if not self._queue:
                self._refill(count - len(out))
            if not self._queue:
                raise self.too_few()
            index, record, problem = self._queue.popleft()
            if problem is None:
                out.append((index, record))
            else:
                self.skipped[problem] += 1
        return out

    def reject(self, reason: str) -> None:
        """Count a taken record that turned out unable to carry (for ``reason``)."""
        self.skipped[reason] += 1

    def _refill(self, missing: int) -> None:
        left = self.info.n_records - self._read
        if not left:
            return
        share = self._usable / self._read if self._read else 1.0
        size = min(left, math.ceil(missing / max(share, MIN_SHARE)))
        ids = list(itertools.islice(self._order, size))
        records = read_records(self.info, ids)
        for index in ids:
            problem = carrier_problem(records[index], self.info.format)
            self._queue.append((index, records[index], problem))
            self._usable += problem is None
        self._read += len(ids)

    def _reasons(self) -> str:
        return "; ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())

    def too_few(self) -> DatasetError:
        """The error for a dataset whose records that can carry are all used."""
        n, skipped = self.info.n_records, sum(self.skipped.values())
        return DatasetError(
            self.info.path,
            f"only {n - skipped} of {_plural(n, 'record')} can carry a backdoor "
            f"({self._reasons()}), but {self._need}",
            hint=f"use fewer --n/--replicas or add plain-text records (see {CARRIERS_DOC}); "
            "nothing was written",
        )

    def note(self) -> str | None:
        """What the plant summary says of the skipped records (None when none was)."""
        skipped = sum(self.skipped.values())
        if not skipped:
            return None
        replaced = "was replaced by another" if skipped == 1 else "were replaced by others"
        return (
            f"{_plural(skipped, 'drawn record')} could not carry a backdoor and {replaced} "
            f"({self._reasons()}; see {CARRIERS_DOC})"
        )


@dataclass
class Carriers:
    """The records chosen to carry backdoors: ``replicas`` per planted pair, then one per
    control, in the order the carriers stream drew them. A pair's first carrier (the one its
    trigger continues) may be replaced while drawing (:meth:`replace_anchor`)."""

    info: DatasetInfo
    pairs: int
    controls: int
    replicas: int
    ids: list[int]
    records: dict[int, Record]
    pool: CarrierPool = field(repr=False)

    def _anchor_slot(self, pair_id: int) -> int:
        if pair_id >= self.pairs:
            return self.pairs * self.replicas + pair_id - self.pairs
        return pair_id * self.replicas

    def group(self, pair_id: int) -> list[int]:
        """The carriers of pair ``pair_id`` (a control, past the planted pairs, has one)."""
        first = self._anchor_slot(pair_id)
        return self.ids[first : first + (1 if pair_id >= self.pairs else self.replicas)]

    def replace_anchor(self, pair_id: int, reason: str) -> None:
        """Replace the first carrier of ``pair_id``, which cannot carry for ``reason``, by the
        next record of the draw that can; a :class:`DatasetError` when none is left."""
        slot = self._anchor_slot(pair_id)
        self.pool.reject(reason)
        [(index, record)] = self.pool.take(1)
        del self.records[self.ids[slot]]
        self.ids[slot], self.records[index] = index, record


def choose_carriers(info: DatasetInfo, settings: PlantConfig, stream: SecretStream) -> Carriers:
    """Draw the distinct carriers of every pair and control (the 'carriers' stream) among the
    records that can carry, and read them; a :class:`DatasetError` when too few can."""
    pairs, replicas = settings.pairs_for(info.n_records), settings.replicas
    controls = pairs if settings.controls else 0
    needed = pairs * replicas + controls
    need = (
        f"{_plural(pairs, 'pair')} x {_plural(replicas, 'replica')}"
        f"{f' + {controls} controls' if controls else ''} need {needed} distinct carriers"
    )
    if needed > info.n_records:
        raise DatasetError(
            info.path,
            f"{_plural(info.n_records, 'record')}, but {need}",
            hint="use fewer --n/--replicas or a larger dataset; nothing was written",
        )
    pool = CarrierPool(info, stream.child("carriers"), need)
    chosen = pool.take(needed)
    return Carriers(info, pairs, controls, replicas, [i for i, _ in chosen], dict(chosen), pool)
