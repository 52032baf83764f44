"""What a key records of a plant run's files: their hashes, record counts and token counts.

Hashes are those the validating and writing passes computed as they read and wrote the files,
when those still hold (:func:`tuneproof.datasets.digests.known_sha256`), else read afresh. Token
counts are the generator's (its tokenizer, or a server's estimate); a large input is counted on a
uniform sample of its records, a very long text on its head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tuneproof.datasets import (
    DatasetFormat,
    DatasetInfo,
    Record,
    iter_records,
    prompt_and_answer,
    read_records,
)
from tuneproof.datasets.digests import known_sha256
from tuneproof.documents import path_sha256
from tuneproof.key import DatasetFacts
from tuneproof.planting.factory import BackdoorFactory
from tuneproof.planting.secret import SecretStream

TOKEN_COUNT_SAMPLE = 2000
LONG_TEXT_CHARS = 20_000


def _record_text(record: Record, fmt: DatasetFormat) -> str:
    messages, answer = prompt_and_answer(record, fmt)
    return "\n".join([*(message.content for message in messages), answer])


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


def _sha256(path: Path) -> str:
    """The file's SHA-256: the one hashed by the pass that read or wrote it, if the file is
    unchanged since, else read afresh."""
    return known_sha256(path) or path_sha256(path)


def dataset_facts(
    info: DatasetInfo,
    files: tuple[Path, Path],
    factory: BackdoorFactory,
    added_text: Sequence[str],
    stream: SecretStream,
) -> DatasetFacts:
    """What the key records of the input and planted ``files``: hashes, records (the same count
    in both: each backdoor record replaces its carrier), and token counts by ``factory`` (the
    input's sampled with ``stream``). ``added_tokens`` counts the tokens of ``added_text``, the
    text plant wrote that the input did not hold: each backdoor record's trigger and signature
    (its carrier's prompt was already there; the carrier's answer it dropped is not
    subtracted)."""
    input_path, output_path = files
    input_tokens, estimated = _count_input_tokens(info, factory.count_tokens, stream)
    return DatasetFacts(
        format=str(info.format),
        container=str(info.container),
        input_sha256=_sha256(input_path),
        planted_sha256=_sha256(output_path),
        input_records=info.n_records,
        planted_records=info.n_records,
        input_tokens=input_tokens,
        input_tokens_estimated=estimated or bool(getattr(factory, "token_counts_estimated", False)),
        added_tokens=sum(_count_tokens(text, factory.count_tokens)[0] for text in added_text),
    )
