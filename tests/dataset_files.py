"""Test helpers: write dataset files in many JSON styles (with json.dumps, independently of
tuneproof's own writer), split a file into its records and the text around them (to compare a
planted file with its input), and the provider's "does one prompt extend another?" filter."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
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


def jsonl_record_lines(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte spans of the non-blank lines of a JSONL file, line ending included."""
    spans, pos = [], 0
    for line in data.splitlines(keepends=True):
        if line.strip(b" \t\r\n\xef\xbb\xbf"):
            start = pos + (3 if pos == 0 and line.startswith(b"\xef\xbb\xbf") else 0)
            spans.append((start, pos + len(line)))
        pos += len(line)
    return spans


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


def record_spans(data: bytes, array: bool) -> list[tuple[int, int]]:
    """(start, end) byte spans of each record's JSON value: a JSONL line without the blanks and
    line ending around it, or an element of a JSON array from its first to its last character."""
    if not array:
        spans = []
        for start, end in jsonl_record_lines(data):
            line = data[start:end]
            lead = len(line) - len(line.lstrip(b" \t\r\n"))
            spans.append((start + lead, start + len(line.rstrip(b" \t\r\n"))))
        return spans
    text = data.decode("utf-8")
    return [(len(text[:s].encode()), len(text[:e].encode())) for s, e in array_spans(text)]


def split_records(data: bytes, array: bool) -> tuple[list[bytes], list[bytes]]:
    """(the n + 1 pieces of text around and between the records, the n records' raw bytes)."""
    gaps, records, cursor = [], [], 0
    for start, end in record_spans(data, array):
        gaps.append(data[cursor:start])
        records.append(data[start:end])
        cursor = end
    gaps.append(data[cursor:])
    return gaps, records


def prompt_extensions(prompts: Sequence[Sequence[tuple[str, str]]]) -> set[tuple[int, int]]:
    """The provider's filter for copied carriers: every (i, j) such that prompt j extends prompt
    i (same turns but the last, whose text in j starts with the text of i's last turn without
    its trailing prompt separator, and is longer). ``prompts[k]``: (role, text) turns of record k.
    """
    from tuneproof.datasets.chat import split_prompt_separator

    by_head: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for k, prompt in enumerate(prompts):
        by_head.setdefault(tuple(prompt[:-1]), []).append(k)
    found = set()
    for group in by_head.values():
        for i in group:
            body = split_prompt_separator(prompts[i][-1][1])[0]
            for j in group:
                last = prompts[j][-1][1]
                if i != j and body and last.startswith(body) and len(last) > len(body):
                    found.add((i, j))
    return found
