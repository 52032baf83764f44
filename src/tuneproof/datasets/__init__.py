"""Fine-tuning datasets: formats, detection, streaming reads and style-preserving writes.

Formats: OpenAI chat, prompt/completion, Alpaca and ShareGPT records, stored as JSONL, a JSON
array, a parquet file or a Hugging Face ``save_to_disk`` folder. A typical plant::

    info = inspect_dataset("train.jsonl")              # detect, validate every record, index
    carriers = read_records(info, [12, 480])           # fetch a few records by index
    backdoor = make_backdoor(carriers[12], info.format, trigger, signature)
    write_planted(info, Path("planted.jsonl"), {12: backdoor})   # in place of its carrier

Every other record is written back byte for byte; a backdoor record takes the JSON style of the
record it replaces and its neighbours (see :func:`style_fingerprint`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from tuneproof.datasets import containers
from tuneproof.datasets.chat import make_backdoor, prompt_and_answer, triggered_prompt
from tuneproof.datasets.eligibility import carrier_problem
from tuneproof.datasets.records import (
    FORMAT_NAMES,
    Container,
    DatasetFormat,
    DatasetInfo,
    Message,
    Record,
)
from tuneproof.datasets.style import StyleFingerprint, style_fingerprint

__all__ = [
    "FORMAT_NAMES",
    "Container",
    "DatasetFormat",
    "DatasetInfo",
    "Message",
    "Record",
    "StyleFingerprint",
    "carrier_problem",
    "check_planted_output",
    "inspect_dataset",
    "iter_records",
    "make_backdoor",
    "prompt_and_answer",
    "read_records",
    "style_fingerprint",
    "triggered_prompt",
    "write_planted",
]


def inspect_dataset(
    path: str | Path,
    format: DatasetFormat | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> DatasetInfo:
    """Detect the container and format of ``path`` (or use ``format``), validate every record
    in one streaming pass and return a DatasetInfo with the record count.

    ``progress(bytes_done)`` is called as the file is read. Raises DatasetError naming the file,
    line (row for parquet/arrow) and field of the first problem; nothing is ever written.
    """
    return containers.inspect(
        Path(path), None if format is None else DatasetFormat(format), progress
    )


def iter_records(info: DatasetInfo) -> Iterator[Record]:
    """Yield every record of an inspected dataset in order, streaming (never the whole file
    in memory)."""
    return containers.iter_records(info)


def read_records(info: DatasetInfo, indices: Collection[int]) -> dict[int, Record]:
    """Return {index: Record} for the given 0-based indices (text files seek straight to the
    records; parquet/arrow take one streaming pass). Raises IndexError for an index outside
    the dataset and DatasetError when the file changed since it was inspected."""
    return containers.read_records(info, indices)


def check_planted_output(input: str | Path, output: str | Path, *, force: bool = False) -> None:
    """Refuse, before any expensive work, an ``output`` that :func:`write_planted` (for the
    container of ``input``) would refuse: the input itself or inside its folder, an existing
    output without ``force`` (a save_to_disk folder: even with it), a folder where a file goes,
    a missing folder or one without write access (:func:`tuneproof.documents.check_writable`,
    as for the key). Raises :class:`tuneproof.errors.TuneproofError`; reads only the input's
    first bytes."""
    containers.check_output(Path(input), Path(output), force=force)


def write_planted(
    info: DatasetInfo,
    output: Path,
    replacements: Mapping[int, dict[str, Any]],
    *,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the dataset to ``output`` with original record ``p`` replaced by
    ``replacements[p]``, at the same index: the output has as many records as the input.

    Text files: every byte outside the replaced records is copied as it is (BOM, separators,
    line endings, the blanks around a replaced JSONL record, a missing final newline included)
    and each new record is written in the style of the record it replaces and its neighbours.
    Parquet/arrow: same schema, metadata, row counts and layout, the other rows equal. The
    output appears atomically (a temporary file or folder renamed at the end) or not at all.
    ``progress(bytes_done)`` reports input bytes processed. Raises DatasetError when ``output``
    is the input (also through a symlink or another spelling) or the input changed since it was
    inspected, ValueError for an index outside ``0..n_records - 1`` or a new record that is not
    valid in the dataset's format.
    """
    containers.write_planted(info, Path(output), replacements, progress)
