"""Parquet files and Hugging Face ``save_to_disk`` folders, read and written with pyarrow.

Both are streamed batch by batch (a parquet file is rewritten one row group at a time, so memory
is bounded by its largest row group). The output keeps the input's schema and schema metadata,
row-group or shard layout, row counts and compression; rows not replaced are equal to the
input's.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tuneproof.atomic import atomic_directory, atomic_output
from tuneproof.datasets.records import DatasetFormat, Record
from tuneproof.datasets.schema import (
    detect_format,
    is_valid,
    record_problem,
    unknown_format_problem,
)
from tuneproof.datasets.textfile import NOTHING_WRITTEN, check_unchanged, file_state
from tuneproof.errors import DatasetError

STATE_JSON = "state.json"
BATCH_ROWS = 1000


@dataclass(frozen=True)
class ArrowIndex:
    """The files of an arrow dataset (one parquet file, or the shards of a save_to_disk folder)
    with their row counts and (size, mtime_ns) when inspected."""

    files: tuple[Path, ...]
    rows: tuple[int, ...]
    states: tuple[tuple[int, int], ...]
    stream: bool  # shards in Arrow IPC stream format (as datasets writes them), else file format


def _bad_file(path: Path, error: Exception, what: str) -> DatasetError:
    return DatasetError(
        path, f"cannot read this {what} ({error})", hint="check that the file is complete"
    )


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        pf = pq.ParquetFile(path)
        yield from pf.iter_batches(batch_size=BATCH_ROWS)
    except (pa.ArrowException, OSError) as e:
        raise _bad_file(path, e, "parquet file") from None


def _open_shard(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch], bool]:
    """(schema, batches, is_stream) of an Arrow IPC file in stream or file format."""
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(source)
            return reader.schema, iter(reader), True
        except pa.ArrowInvalid:
            file_reader = pa.ipc.open_file(source)
            batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
            return file_reader.schema, batches, False
    except (pa.ArrowException, OSError) as e:
        raise _bad_file(path, e, "arrow file") from None


def hf_data_files(folder: Path) -> list[Path]:
    """The shard files a save_to_disk folder lists in its state.json, in order."""
    try:
        state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
        files = [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(
            folder / STATE_JSON, f"unreadable ({e})", hint="is this a save_to_disk folder?"
        ) from None
    for f in files:
        if not f.is_file():
            raise DatasetError(
                f, "listed in state.json but missing", hint="copy the whole dataset folder"
            )
    return files


def _batches(files: Sequence[Path], parquet: bool) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(global row of the first row, batch) over all files."""
    row = 0
    for path in files:
        batches = _parquet_batches(path) if parquet else _open_shard(path)[1]
        for batch in batches:
            yield row, batch
            row += batch.num_rows


def scan(
    path: Path,
    parquet: bool,
    fmt: DatasetFormat | None,
    progress: Callable[[int], None] | None = None,
) -> tuple[DatasetFormat, bool, ArrowIndex]:
    """Validate every row of a parquet file or save_to_disk folder and count rows per file.

    Returns (format, whether it was detected, index). Raises DatasetError naming the row (as
    ``line``, 1-based) of the first bad record.
    """
    files = [path] if parquet else hf_data_files(path)
    detected = fmt is None
    valid = None if fmt is None else is_valid(fmt)
    rows: list[int] = []
    stream = True
    done_bytes = 0
    for f in files:
        n = 0
        if parquet:
            batches = _parquet_batches(f)
        else:
            _, batches, stream = _open_shard(f)
        for batch in batches:
            for j, value in enumerate(batch.to_pylist()):
                row = sum(rows) + n + j + 1
                if fmt is None:
                    fmt = detect_format(value)
                    if fmt is None:
                        bad = unknown_format_problem(value)
                        raise DatasetError(
                            path, bad.message, line=row, field=bad.field, hint=bad.hint
                        )
                    valid = is_valid(fmt)
                assert valid is not None
                if not valid(value) and (problem := record_problem(value, fmt, detected)):
                    raise DatasetError(
                        path,
                        problem.message,
                        line=row,
                        field=problem.field,
                        hint=f"{problem.hint}; {NOTHING_WRITTEN}",
                    )
            n += batch.num_rows
        rows.append(n)
        done_bytes += f.stat().st_size
        if progress is not None:
            progress(done_bytes)
    if fmt is None or not sum(rows):
        raise DatasetError(
            path, "the dataset holds no rows", hint="give a dataset with at least one record"
        )
    states = tuple(file_state(f) for f in files)
    return fmt, detected, ArrowIndex(tuple(files), tuple(rows), states, stream)


def _check(index: ArrowIndex) -> None:
    for f, state in zip(index.files, index.states, strict=True):
        check_unchanged(f, state)


def iter_records(index: ArrowIndex, parquet: bool) -> Iterator[Record]:
    """Yield every row as a Record (``line`` = row + 1), streaming batch by batch."""
    _check(index)
    for row, batch in _batches(index.files, parquet):
        for j, value in enumerate(batch.to_pylist()):
            yield Record(row + j, row + j + 1, value)


def read_records(index: ArrowIndex, parquet: bool, wanted: Sequence[int]) -> dict[int, Record]:
    """Fetch the rows at the given indices in one streaming pass."""
    _check(index)
    todo = sorted(set(wanted))
    out: dict[int, Record] = {}
    for row, batch in _batches(index.files, parquet):
        while todo and todo[0] < row + batch.num_rows:
            i = todo.pop(0)
            out[i] = Record(i, i + 1, batch.slice(i - row, 1).to_pylist()[0])
        if not todo:
            break
    return out


def _replaced(
    batch: pa.RecordBatch,
    first_row: int,
    rows: list[int],
    replacements: Mapping[int, dict[str, Any]],
) -> pa.RecordBatch:
    """``batch`` (rows first_row...) with each of the given rows replaced by its new record."""
    pieces, cursor = [], 0
    for p in rows:
        local = p - first_row
        pieces.append(batch.slice(cursor, local - cursor))
        pieces.append(pa.RecordBatch.from_pylist([replacements[p]], schema=batch.schema))
        cursor = local + 1
    pieces.append(batch.slice(cursor))
    table = pa.Table.from_batches(pieces, schema=batch.schema).combine_chunks()
    return table.to_batches()[0]


def _rows_in(lo: int, hi: int, rows: list[int]) -> list[int]:
    """The replaced rows that fall into rows [lo, hi)."""
    return [p for p in rows if lo <= p < hi]


def write_parquet(
    index: ArrowIndex,
    output: Path,
    replacements: Mapping[int, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Rewrite a parquet file with rows replaced, row group by row group (same row-group sizes;
    a row group without a replaced row is written back as read)."""
    _check(index)
    path = index.files[0]
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    codec = meta.row_group(0).column(0).compression if meta.num_row_groups else "SNAPPY"
    replaced = sorted(replacements)
    row = 0
    with atomic_output(output) as dst:
        writer = pq.ParquetWriter(
            dst,
            pf.schema_arrow,
            compression="none" if codec == "UNCOMPRESSED" else codec.lower(),
            version=meta.format_version,
        )
        for g in range(meta.num_row_groups):
            table = pf.read_row_group(g)
            here = _rows_in(row, row + table.num_rows, replaced)
            if here:
                batch = table.combine_chunks().to_batches()[0]
                table = pa.Table.from_batches([_replaced(batch, row, here, replacements)])
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            row += meta.row_group(g).num_rows
            if progress is not None:
                progress(int(index.states[0][0] * row / max(1, sum(index.rows))))
        writer.close()


def write_hf_disk(
    folder: Path,
    index: ArrowIndex,
    output: Path,
    replacements: Mapping[int, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write a save_to_disk folder with rows replaced: same shard files, batches, schema and
    metadata, state.json with a fresh fingerprint (what datasets does after any change), every
    other file (dataset_info.json: the split keeps its size) copied as it is."""
    _check(index)
    if output.exists():
        raise DatasetError(
            output, "already exists", hint="remove it or choose another output folder"
        )
    replaced = sorted(replacements)
    row, done = 0, 0
    with atomic_directory(output) as tmp:
        for shard, path in enumerate(index.files):
            schema, batches, _ = _open_shard(path)
            opener = pa.ipc.new_stream if index.stream else pa.ipc.new_file
            with opener(str(tmp / path.name), schema) as writer:
                for batch in batches:  # memory-mapped: no copy
                    here = _rows_in(row, row + batch.num_rows, replaced)
                    writer.write_batch(_replaced(batch, row, here, replacements) if here else batch)
                    row += batch.num_rows
            done += index.states[shard][0]
            if progress is not None:
                progress(done)
        for item in folder.iterdir():
            if item in index.files:
                continue
            if item.name == STATE_JSON:
                (tmp / item.name).write_text(
                    _new_fingerprint(item.read_text(encoding="utf-8")), encoding="utf-8"
                )
            elif item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)


def _new_fingerprint(state_text: str) -> str:
    """state.json with a new random ``_fingerprint`` of the same length (what datasets does
    after any change), everything else byte for byte."""

    def fresh(m: re.Match[str]) -> str:
        old = m.group(2)
        return m.group(1) + secrets.token_hex(max(1, len(old) // 2))[: len(old)] + m.group(3)

    return re.sub(r'("_fingerprint"\s*:\s*")([0-9a-f]+)(")', fresh, state_text, count=1)
