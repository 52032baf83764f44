"""Recognise how a dataset is stored and route each operation to the module for that container."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from tuneproof.datasets import jsonarray, jsonl, jsonl_scan
from tuneproof.datasets.records import FORMAT_NAMES, Container, DatasetFormat, DatasetInfo, Record
from tuneproof.datasets.schema import PROBLEM
from tuneproof.datasets.textfile import (
    BOM,
    NOTHING_WRITTEN,
    check_not_compressed,
    check_output_path,
)
from tuneproof.documents import check_writable
from tuneproof.errors import DatasetError, TuneproofError

_TEXT_WS = b" \t\r\n"


def detect_container(path: Path) -> tuple[Container, bool]:
    """Return (container, has_bom) for ``path``: a save_to_disk folder, a parquet file (by
    magic bytes or suffix), a JSON array (first character ``[``) or JSONL (anything else).

    Raises DatasetError for a missing path, an unrecognised folder or an empty file.
    """
    if path.is_dir():
        if (path / "state.json").is_file():
            return Container.HF_DISK, False
        if (path / "dataset_dict.json").is_file():
            raise DatasetError(
                path,
                "this folder holds several splits (a DatasetDict)",
                hint=f"point at one split folder, e.g. {path / 'train'}",
            )
        raise DatasetError(
            path, "a folder that is not a Hugging Face save_to_disk dataset", hint="give a file"
        )
    if not path.exists():
        raise DatasetError(path, "no such file or folder", hint="check the path")
    with open(path, "rb") as f:
        head = f.read(6)
        check_not_compressed(path, head)
        if head[:4] == b"PAR1" or path.suffix.lower() == ".parquet":
            return Container.PARQUET, False
        f.seek(0)
        has_bom = f.read(len(BOM)) == BOM
        if not has_bom:
            f.seek(0)
        while block := f.read(1 << 16):
            text = block.lstrip(_TEXT_WS)
            if text:
                return (Container.JSON_ARRAY if text.startswith(b"[") else Container.JSONL), has_bom
    raise DatasetError(path, "the file is empty", hint="give a file with at least one record")


def inspect(
    path: Path, fmt: DatasetFormat | None, progress: Callable[[int], None] | None
) -> DatasetInfo:
    """Detect, validate and index a dataset; see :func:`tuneproof.datasets.inspect_dataset`."""
    try:
        container, has_bom = detect_container(path)
        if container is Container.JSONL:
            found = jsonl_scan.scan(path, fmt, progress)
            return DatasetInfo(
                path=path,
                format=found.format,
                container=container,
                n_records=len(found.index.starts),
                has_bom=has_bom,
                n_bytes=found.index.state[0],
                format_detected=found.detected,
                final_newline=found.index.final_newline,
                style=found.first_style,
                index=found.index,
            )
        if container is Container.JSON_ARRAY:
            fmt, detected, index, style = jsonarray.scan(path, fmt, has_bom, progress)
            return DatasetInfo(
                path=path,
                format=fmt,
                container=container,
                n_records=len(index.starts),
                has_bom=has_bom,
                n_bytes=index.state[0],
                format_detected=detected,
                style=style,
                index=index,
            )
        from tuneproof.datasets import arrow  # pyarrow is slow to import: only when needed

        fmt, detected, arrow_index = arrow.scan(path, container is Container.PARQUET, fmt, progress)
        return DatasetInfo(
            path=path,
            format=fmt,
            container=container,
            n_records=sum(arrow_index.rows),
            has_bom=False,
            n_bytes=sum(size for size, _ in arrow_index.states),
            format_detected=detected,
            index=arrow_index,
        )
    except OSError as e:
        raise DatasetError(
            path, f"cannot read ({e.strerror or e})", hint="check the path and its permissions"
        ) from None


def iter_records(info: DatasetInfo) -> Iterator[Record]:
    """Stream the records of an inspected dataset."""
    if info.container is Container.JSONL:
        return jsonl.iter_records(info.path)
    if info.container is Container.JSON_ARRAY:
        return jsonarray.iter_records(info.path, info.has_bom)
    from tuneproof.datasets import arrow

    return arrow.iter_records(info.index, info.container is Container.PARQUET)


def read_records(info: DatasetInfo, indices: Collection[int]) -> dict[int, Record]:
    """Fetch records by index; raises IndexError for an index outside the dataset."""
    wanted = sorted(set(indices))
    if wanted and (wanted[0] < 0 or wanted[-1] >= info.n_records):
        bad = wanted[0] if wanted[0] < 0 else wanted[-1]
        raise IndexError(f"record {bad} is outside the dataset ({info.n_records} records)")
    if info.container is Container.JSONL:
        return jsonl.read_records(info.path, info.index, wanted)
    if info.container is Container.JSON_ARRAY:
        return jsonarray.read_records(info.path, info.index, wanted)
    from tuneproof.datasets import arrow

    return arrow.read_records(info.index, info.container is Container.PARQUET, wanted)


def check_output(source: Path, output: Path, *, force: bool) -> None:
    """Refuse, before any work, a planted output that :func:`write_planted` would refuse: see
    :func:`tuneproof.datasets.check_planted_output`."""
    container, _ = detect_container(source)
    check_output_path(source, output)
    folder = container is Container.HF_DISK
    if folder and (output.exists() or output.is_symlink()):
        raise DatasetError(
            output,
            "already exists",
            hint="a save_to_disk folder is never replaced, even with --force: remove it or "
            f"choose another -o; {NOTHING_WRITTEN}",
        )
    if output.exists() and not force:
        raise TuneproofError(f"{output} already exists - choose another -o or pass --force")
    check_writable(output, TuneproofError, what="planted folder" if folder else "planted file")


def _check_replacements(info: DatasetInfo, replacements: Mapping[int, dict[str, Any]]) -> None:
    for p, record in replacements.items():
        if not 0 <= p < info.n_records:
            raise ValueError(f"record {p} to replace is outside 0..{info.n_records - 1}")
        problem = PROBLEM[info.format](record)
        if problem is not None:
            raise ValueError(
                f"the record to put in place of record {p} is not a valid "
                f"{FORMAT_NAMES[info.format]} record: field {problem.field!r}: {problem.message}"
            )


def write_planted(
    info: DatasetInfo,
    output: Path,
    replacements: Mapping[int, dict[str, Any]],
    progress: Callable[[int], None] | None,
) -> None:
    """Write the planted dataset; see :func:`tuneproof.datasets.write_planted`."""
    check_output_path(info.path, output)
    if output.is_dir() and info.container is not Container.HF_DISK:
        raise DatasetError(output, "is a folder", hint="give the path of the file to write")
    _check_replacements(info, replacements)
    try:
        if info.container is Container.JSONL:
            jsonl.write(info.path, info.index, output, replacements, progress)
        elif info.container is Container.JSON_ARRAY:
            jsonarray.write(info.path, info.index, output, replacements, progress)
        else:
            from tuneproof.datasets import arrow

            if info.container is Container.PARQUET:
                arrow.write_parquet(info.index, output, replacements, progress)
            else:
                arrow.write_hf_disk(info.path, info.index, output, replacements, progress)
    except OSError as e:
        raise DatasetError(
            output,
            f"cannot write ({e.strerror or e})",
            hint=f"check the folder's permissions and free space; {NOTHING_WRITTEN}",
        ) from None
