"""Parquet files and Hugging Face ``save_to_disk`` folders, read and written with pyarrow.

Both are streamed batch by batch (a parquet file is rewritten one row group at a time, so memory
is bounded by its largest row group). The output keeps the input's schema and schema metadata,
row-group or shard layout and compression; untouched rows are equal to the input's.
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
INFO_JSON = "dataset_info.json"
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


def _spliced(
    batch: pa.RecordBatch,
    first_row: int,
    points: list[int],
    insertions: Mapping[int, Sequence[dict[str, Any]]],
) -> pa.RecordBatch:
    """``batch`` (rows first_row...) with the inserted rows spliced in before the given points."""
    pieces, cursor = [], 0
    for p in points:
        local = p - first_row
        pieces.append(batch.slice(cursor, local - cursor))
        pieces.append(pa.RecordBatch.from_pylist(list(insertions[p]), schema=batch.schema))
        cursor = local
    pieces.append(batch.slice(cursor))
    table = pa.Table.from_batches(pieces, schema=batch.schema).combine_chunks()
    return table.to_batches()[0]


def _points_in(lo: int, hi: int, last: bool, points: list[int]) -> list[int]:
    """Insertion points that fall into rows [lo, hi) (and hi itself for the last batch)."""
    return [p for p in points if lo <= p < hi or (last and p == hi)]


def write_parquet(
    index: ArrowIndex,
    output: Path,
    insertions: Mapping[int, Sequence[dict[str, Any]]],
    progress: Callable[[int], None] | None,
) -> None:
    """Rewrite a parquet file with rows inserted, row group by row group."""
    _check(index)
    path = index.files[0]
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    codec = meta.row_group(0).column(0).compression if meta.num_row_groups else "SNAPPY"
    points = sorted(p for p, rows in insertions.items() if rows)
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
            last = g == meta.num_row_groups - 1
            here = _points_in(row, row + table.num_rows, last, points)
            if here:
                batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
                if batch is None:
                    batch = pa.RecordBatch.from_pylist([], schema=pf.schema_arrow)
                table = pa.Table.from_batches([_spliced(batch, row, here, insertions)])
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            row += meta.row_group(g).num_rows
            if progress is not None:
                progress(int(index.states[0][0] * row / max(1, sum(index.rows))))
        writer.close()


def write_hf_disk(
    folder: Path,
    index: ArrowIndex,
    output: Path,
    insertions: Mapping[int, Sequence[dict[str, Any]]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write a save_to_disk folder with rows inserted: same shard files, schema and metadata,
    state.json with a fresh fingerprint, dataset_info.json with the new split size."""
    _check(index)
    if output.exists():
        raise DatasetError(
            output, "already exists", hint="remove it or choose another output folder"
        )
    points = sorted(p for p, rows in insertions.items() if rows)
    n_total = sum(index.rows)
    row, done = 0, 0
    with atomic_directory(output) as tmp:
        for shard, path in enumerate(index.files):
            schema, batches, _ = _open_shard(path)
            last_shard = shard == len(index.files) - 1
            opener = pa.ipc.new_stream if index.stream else pa.ipc.new_file
            with opener(str(tmp / path.name), schema) as writer:
                shard_batches = list(batches)  # memory-mapped: no copy
                for k, batch in enumerate(shard_batches):
                    last = last_shard and k == len(shard_batches) - 1
                    here = _points_in(row, row + batch.num_rows, last, points)
                    writer.write_batch(_spliced(batch, row, here, insertions) if here else batch)
                    row += batch.num_rows
                if last_shard and not shard_batches and n_total in points:
                    writer.write_batch(
                        pa.RecordBatch.from_pylist(list(insertions[n_total]), schema=schema)
                    )
            done += index.states[shard][0]
            if progress is not None:
                progress(done)
        added = sum(len(insertions[p]) for p in points)
        for item in folder.iterdir():
            if item in index.files:
                continue
            if item.name == STATE_JSON:
                (tmp / item.name).write_text(
                    _new_fingerprint(item.read_text(encoding="utf-8")), encoding="utf-8"
                )
            elif item.name == INFO_JSON:
                text = _grown_split(item.read_text(encoding="utf-8"), folder, n_total, added)
                (tmp / item.name).write_text(text, encoding="utf-8")
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


def _grown_split(info_text: str, folder: Path, n_before: int, added: int) -> str:
    """dataset_info.json with this split's ``num_examples`` raised by ``added`` (when recorded)."""
    try:
        split = json.loads((folder / STATE_JSON).read_text(encoding="utf-8")).get("_split")
        info = json.loads(info_text)
        entry = (info.get("splits") or {}).get(split)
    except (ValueError, AttributeError):
        return info_text
    if not isinstance(entry, dict) or entry.get("num_examples") != n_before:
        return info_text
    entry["num_examples"] = n_before + added
    return json.dumps(info, indent=2)
