"""Test helpers: write dataset files in many JSON styles (with json.dumps, independently of
tuneproof's own writer) and take inserted records back out of a planted file."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ESC = re.compile(r"\\\\|\\u[0-9a-f]{4}")


@dataclass(frozen=True)
class Style:
    """How a fixture file is written."""

    name: str
    item_sep: str = ", "
    key_sep: str = ": "
    ensure_ascii: bool = True
    escape_slash: bool = False
    hex_upper: bool = False
    indent: int | str | None = None  # JSON arrays only
    eol: str = "\n"
    trailing: str = ""  # blanks after each JSONL record
    final_newline: bool = True
    bom: bool = False


STYLES = [
    Style("python-default"),
    Style("compact", item_sep=",", key_sep=":"),
    Style("raw-unicode", ensure_ascii=False),
    Style("compact-raw", item_sep=",", key_sep=":", ensure_ascii=False),
    Style("escaped-slash", item_sep=",", key_sep=":", escape_slash=True),
    Style("upper-hex", hex_upper=True),
    Style("crlf", eol="\r\n"),
    Style("trailing-spaces", trailing="  "),
    Style("no-final-newline", final_newline=False),
    Style("bom", bom=True),
    Style(
        "crlf-bom-no-final-newline", eol="\r\n", bom=True, final_newline=False, ensure_ascii=False
    ),
]
ARRAY_STYLES = [
    Style("array-one-line"),
    Style("array-compact", item_sep=",", key_sep=":"),
    Style("array-indent-2", item_sep=",", indent=2),
    Style("array-indent-4", item_sep=",", indent=4, ensure_ascii=False),
    Style("array-indent-4-crlf", item_sep=",", indent=4, eol="\r\n"),
    Style("array-tab", item_sep=",", indent="\t", escape_slash=True),
    Style("array-py2-trailing-space", item_sep=", ", indent=2),
    Style("array-bom-no-final-newline", item_sep=",", indent=2, bom=True, final_newline=False),
]


def dumps(value: Any, style: Style, indent: int | str | None = None) -> str:
    """json.dumps in ``style``, with escaped '/' and upper-case hex added by post-processing."""
    text = json.dumps(
        value,
        ensure_ascii=style.ensure_ascii,
        separators=(style.item_sep, style.key_sep),
        indent=indent,
    )
    if style.escape_slash:
        text = text.replace("/", "\\/")
    if style.hex_upper:
        text = _ESC.sub(lambda m: m.group().upper().replace("\\U", "\\u"), text)
    if indent is not None and style.eol != "\n":
        text = text.replace("\n", style.eol)
    return text


def write_jsonl(path: Path, records: Sequence[Any], style: Style) -> bytes:
    """Write ``records`` as JSONL in ``style``; return the bytes written."""
    lines = [dumps(r, style) + style.trailing for r in records]
    text = style.eol.join(lines) + (style.eol if style.final_newline else "")
    data = (b"\xef\xbb\xbf" if style.bom else b"") + text.encode()
    path.write_bytes(data)
    return data


def write_array(path: Path, records: Sequence[Any], style: Style) -> bytes:
    """Write ``records`` as one JSON array in ``style``; return the bytes written."""
    text = dumps(list(records), style, indent=style.indent)
    text += style.eol if style.final_newline else ""
    data = (b"\xef\xbb\xbf" if style.bom else b"") + text.encode()
    path.write_bytes(data)
    return data


def inserted_flags(n: int, insertions: Mapping[int, Sequence[Any]]) -> list[bool]:
    """For each record of the planted file, in order: was it inserted?"""
    flags: list[bool] = []
    for p in range(n + 1):
        flags += [True] * len(insertions.get(p, []))
        if p < n:
            flags.append(False)
    return flags


def jsonl_record_lines(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte spans of the non-blank lines of a JSONL file, line ending included."""
    spans, pos = [], 0
    for line in data.splitlines(keepends=True):
        if line.strip(b" \t\r\n\xef\xbb\xbf"):
            start = pos + (3 if pos == 0 and line.startswith(b"\xef\xbb\xbf") else 0)
            spans.append((start, pos + len(line)))
        pos += len(line)
    return spans


def _cut(data: bytes | str, cuts: list[tuple[int, int]]) -> Any:
    """``data`` without the given (start, end) ranges."""
    keep, cursor = [], 0
    for start, end in sorted(cuts):
        keep.append(data[cursor:start])
        cursor = max(cursor, end)
    keep.append(data[cursor:])
    return type(data)().join(keep)  # type: ignore[arg-type]


def remove_inserted_jsonl(data: bytes, flags: Sequence[bool]) -> tuple[bytes, list[bytes]]:
    """(the planted file without its inserted lines, the raw inserted lines)."""
    spans = jsonl_record_lines(data)
    assert len(spans) == len(flags)
    no_final_newline = not data.endswith(b"\n")
    cuts, removed = [], []
    for k, ((start, end), inserted) in enumerate(zip(spans, flags, strict=True)):
        if not inserted:
            continue
        removed.append(data[start:end])
        if no_final_newline and not any(not f for f in flags[k + 1 :]):
            # after the last original line of a file without final newline, an inserted line
            # comes with the line ending before it
            eol = 2 if data[:start].endswith(b"\r\n") else 1
            line = data[start:end]
            own = 2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0
            cuts.append((start - eol, end - own))
        else:
            cuts.append((start, end))
    return _cut(data, cuts), removed


def array_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the elements of the top-level JSON array in ``text``."""
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    spans: list[tuple[int, int]] = []
    while True:
        i += len(text[i:]) - len(text[i:].lstrip())
        if text[i] == "]":
            return spans
        _, end = decoder.raw_decode(text, i)
        spans.append((i, end))
        i = end + len(text[end:]) - len(text[end:].lstrip())
        if text[i] == ",":
            i += 1


def remove_inserted_array(data: bytes, flags: Sequence[bool]) -> tuple[bytes, list[bytes]]:
    """(the planted array without its inserted elements and one separator each, the raw
    inserted elements)."""
    text = data.decode("utf-8")
    spans = array_spans(text)
    assert len(spans) == len(flags)
    cuts, removed = [], []
    for k, ((start, end), inserted) in enumerate(zip(spans, flags, strict=True)):
        if not inserted:
            continue
        removed.append(text[start:end].encode())
        if any(not f for f in flags[k + 1 :]):
            cuts.append((start, spans[k + 1][0]))  # the element and the separator after it
        else:
            cuts.append((spans[k - 1][1], end))  # trailing: the separator before it
    return _cut(text, cuts).encode(), removed
