"""The value types of the datasets package: formats, containers, records and dataset summaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from tuneproof.datasets.style import StyleFingerprint


class DatasetFormat(StrEnum):
    """The record schema of a fine-tuning dataset."""

    OPENAI_CHAT = "openai-chat"
    PROMPT_COMPLETION = "prompt-completion"
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"


class Container(StrEnum):
    """How the records are stored on disk."""

    JSONL = "jsonl"
    JSON_ARRAY = "json-array"
    PARQUET = "parquet"
    HF_DISK = "hf-disk"


FORMAT_NAMES: dict[DatasetFormat, str] = {
    DatasetFormat.OPENAI_CHAT: "OpenAI chat",
    DatasetFormat.PROMPT_COMPLETION: "prompt/completion",
    DatasetFormat.ALPACA: "Alpaca",
    DatasetFormat.SHAREGPT: "ShareGPT",
}


class Message(NamedTuple):
    """One turn of the normalised chat view; ``role`` is system, user, assistant or tool.

    A ``(role, content)`` tuple (:data:`tuneproof.types.Turn`), so that a list of messages is a
    chat every backend takes as it is, with no conversion."""

    role: str
    content: str


@dataclass(frozen=True)
class Record:
    """One parsed record: its 0-based ``index``, the 1-based ``line`` where it starts (row + 1 for
    parquet and arrow) and the native record ``data`` exactly as parsed."""

    index: int
    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`inspect_dataset` found: where, which format and container, how many records.

    ``format_detected`` is False when the format came from an override. ``final_newline`` says
    whether a text file ends with a line ending. ``style`` is the style fingerprint of the first
    record of a text file (None for parquet and arrow). ``index`` is private bookkeeping used by
    the reading and writing functions (record byte offsets, the file's size and mtime).
    """

    path: Path
    format: DatasetFormat
    container: Container
    n_records: int
    has_bom: bool
    n_bytes: int
    format_detected: bool = True
    final_newline: bool = True
    style: StyleFingerprint | None = None
    index: Any = field(default=None, repr=False, compare=False)

    def describe(self) -> str:
        """A one-line summary, e.g. ``"OpenAI chat (detected), JSONL, 1,000 records"``."""
        how = "detected" if self.format_detected else "given"
        container = {
            Container.JSONL: "JSONL",
            Container.JSON_ARRAY: "JSON array",
            Container.PARQUET: "parquet",
            Container.HF_DISK: "Hugging Face save_to_disk folder",
        }[self.container]
        return f"{FORMAT_NAMES[self.format]} ({how}), {container}, {self.n_records:,} records"
