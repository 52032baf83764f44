"""The JSON style of a record: separators, escaping, indentation, line ending and key order.

A provider inspecting a planted file must not be able to tell backdoor records from their
neighbours by how they are written. :func:`style_fingerprint` reads the style out of a record's
raw bytes; :mod:`tuneproof.datasets.render` writes a new record in that style. Fields that a record
gives no evidence for (e.g. ``ensure_ascii`` in a record without any non-ASCII character) are
None, meaning "unknown".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from typing import Any

import orjson

BOM = "\ufeff"
# A JSON string literal (unrolled loop: fast on long strings).
STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
ESCAPE_RE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_ITEM_PRETTY_RE = re.compile(r",([ \t]*)\r?\n")
_ITEM_RE = re.compile(r",([ \t]*)")
_KEY_RE = re.compile(r"([ \t]*):([ \t]*)")
_PAD_RE = re.compile(r"[\[{]([ \t]*)[^\s\]}]")
_LEADING_WS_RE = re.compile(r"[ \t]*")
_HTML_ESCAPES = frozenset(("u003c", "u003e", "u0026", "u003C", "u003E"))
# Escaped by ensure_ascii writers and by HTML-safe ones alike: evidence for neither.
_AMBIGUOUS_ESCAPES = frozenset(("u2028", "u2029"))
# Evidence fields: None when the record says nothing about them.
EVIDENCE_FIELDS = ("ensure_ascii", "escape_slash", "escape_html", "hex_upper", "short_escapes")


@dataclass(frozen=True)
class StyleFingerprint:
    """How one record is written.

    ``item_separator``/``key_separator``: the text between items (``","`` or ``", "``; in
    multi-line records the text after the comma up to the line break) and around colons
    (``":"``, ``": "``). ``padding``: blanks just inside non-empty brackets of a one-line record.
    ``indent``: the indentation unit of a multi-line record (None for one-line records);
    ``base_indent``: the indentation of its closing brace; ``newline``: the line break inside it.
    ``leading``/``trailing``: blanks before and after the record on its line; ``line_ending``:
    the terminator after it (None when absent, e.g. on a last line without newline).
    Evidence fields (None = no evidence in this record): ``ensure_ascii`` (non-ASCII written as
    ``\\uXXXX``), ``escape_slash`` (``/`` written as ``\\/``), ``escape_html`` (``<>&`` written
    as ``\\u003c``...), ``hex_upper`` (``\\u00E9`` rather than ``\\u00e9``), ``short_escapes``
    (``\\b``/``\\f`` rather than ``\\u0008``/``\\u000c``). ``key_orders``: the key order of every
    object in the record, in order of first appearance.
    """

    item_separator: str | None
    key_separator: str | None
    padding: str | None
    indent: str | None
    base_indent: str
    newline: str | None
    leading: str
    trailing: str
    line_ending: str | None
    ensure_ascii: bool | None
    escape_slash: bool | None
    escape_html: bool | None
    hex_upper: bool | None
    short_escapes: bool | None
    key_orders: tuple[tuple[str, ...], ...]

    def conflicts(self, other: StyleFingerprint) -> list[str]:
        """Names of the fields on which both fingerprints are known and differ (empty = alike).

        Key orders conflict only for objects with the same key set in both records.
        """
        out = []
        for f in fields(self):
            if f.name == "key_orders":
                mine = {frozenset(k): k for k in self.key_orders}
                if any(mine.get(frozenset(k), k) != k for k in other.key_orders):
                    out.append(f.name)
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is not None and b is not None and a != b:
                out.append(f.name)
        return out

    def describe(self) -> str:
        """A short human summary, e.g. ``"separators ', ' ': ', ASCII-escaped, LF"``."""
        parts = []
        if self.indent is not None:
            parts.append(f"indent {len(self.indent.expandtabs(4))}")
        parts.append(f"separators {self.item_separator!r} {self.key_separator!r}")
        if self.ensure_ascii is not None:
            parts.append("ASCII-escaped" if self.ensure_ascii else "raw Unicode")
        if self.escape_slash:
            parts.append("escaped '/'")
        ending = {"\n": "LF", "\r\n": "CRLF"}.get(
            self.line_ending or self.newline or "", "one line"
        )
        parts.append(ending)
        return ", ".join(parts)

    def as_tuple(self) -> tuple[Any, ...]:
        """All fields as a tuple (handy for hashing and comparisons in tests)."""
        return astuple(self)


def style_fingerprint(raw_record_bytes: bytes) -> StyleFingerprint:
    """Read the style of one record from its raw bytes.

    ``raw_record_bytes`` is one JSONL line (with or without its line terminator) or the bytes of
    one element of a JSON array, from its ``{`` to its ``}``. A leading UTF-8 BOM is ignored.
    Raises ValueError when the bytes are not one JSON value.
    """
    text = raw_record_bytes.decode("utf-8").removeprefix(BOM)
    line_ending: str | None = None
    if text.endswith("\r\n"):
        line_ending, text = "\r\n", text[:-2]
    elif text.endswith("\n"):
        line_ending, text = "\n", text[:-1]
    core = text.rstrip(" \t")
    trailing = text[len(core) :]
    leading = _LEADING_WS_RE.match(core)
    assert leading is not None
    core = core[leading.end() :]
    value = orjson.loads(core) if core.isascii() else orjson.loads(core.encode())
    skeleton = STRING_RE.sub('""', core)
    multiline = "\n" in skeleton

    indent: str | None = None
    base_indent = leading.group()
    newline: str | None = None
    padding: str | None = None
    if multiline:
        newline = "\r\n" if "\r\n" in skeleton else "\n"
        lines = skeleton.split("\n")
        base_indent = _LEADING_WS_RE.match(lines[-1]).group()  # type: ignore[union-attr]
        inner = [_LEADING_WS_RE.match(ln).group() for ln in lines[1:-1] if ln.strip()]  # type: ignore[union-attr]
        if inner:
            indent = min(inner, key=len)[len(base_indent) :]
        item = _ITEM_PRETTY_RE.search(skeleton)
    else:
        item = _ITEM_RE.search(skeleton)
        pad = _PAD_RE.search(skeleton)
        padding = pad.group(1) if pad else None
    key = _KEY_RE.search(skeleton)
    evidence = _escape_evidence(core)
    return StyleFingerprint(
        item_separator="," + item.group(1) if item else None,
        key_separator=key.group(1) + ":" + key.group(2) if key else None,
        padding=padding,
        indent=indent,
        base_indent=base_indent,
        newline=newline,
        leading=leading.group(),
        trailing=trailing,
        line_ending=line_ending,
        key_orders=tuple(dict.fromkeys(_key_orders(value))),
        **evidence,
    )


def _key_orders(value: Any) -> Iterator[tuple[str, ...]]:
    """Yield the key tuple of every object inside ``value``, depth first."""
    if isinstance(value, dict):
        yield tuple(value)
        for item in value.values():
            yield from _key_orders(item)
    elif isinstance(value, list):
        for item in value:
            yield from _key_orders(item)


def _vote(yes: int, no: int) -> bool | None:
    """True/False by majority of evidence, None when there is none."""
    if yes == no == 0:
        return None
    return yes >= no


def _escape_evidence(core: str) -> dict[str, bool | None]:
    """Count escapes in a record's text and turn them into the evidence fields."""
    esc_non_ascii = esc_slash = esc_html = upper = lower = short = long_bf = 0
    for m in ESCAPE_RE.finditer(core):
        e = m.group(1)
        if len(e) == 1:
            if e == "/":
                esc_slash += 1
            elif e in "bf":
                short += 1
            continue
        code = int(e[1:], 16)
        if code >= 0x80 and e not in _AMBIGUOUS_ESCAPES:
            esc_non_ascii += 1
        if e in _HTML_ESCAPES:
            esc_html += 1
        if code in (0x08, 0x0C):
            long_bf += 1
        letters = [c for c in e[1:] if c.isalpha()]
        if letters:
            upper += all(c.isupper() for c in letters)
            lower += all(c.islower() for c in letters)
    raw_non_ascii = 0 if core.isascii() else len(core) - len(core.encode("ascii", "ignore"))
    raw_slash = core.count("/") - esc_slash
    raw_html = core.count("<") + core.count(">") + core.count("&")
    return {
        "ensure_ascii": _vote(esc_non_ascii, raw_non_ascii),
        "escape_slash": _vote(esc_slash, raw_slash),
        "escape_html": _vote(esc_html, raw_html),
        "hex_upper": _vote(upper, lower),
        "short_escapes": _vote(short, long_bf),
    }


# An escape at the start of a backslash run (so that an escaped backslash followed by, say,
# "u0026" is not read as the escape \u0026); a character preceded by an even run (unescaped).
_ESC = rb"(?<!\\)(?:\\\\)*\\"
_RAW = rb"(?<!\\)(?:\\\\)*"
_FILE_EVIDENCE: dict[str, tuple[re.Pattern[bytes], re.Pattern[bytes]]] = {
    # field: (pattern for True, pattern for False)
    "ensure_ascii": (
        re.compile(_ESC + rb"u(?:00[89a-fA-F]|0[1-9a-fA-F][0-9a-fA-F]|[1-9a-fA-F][0-9a-fA-F]{2})"),
        re.compile(rb"[\x80-\xff]"),  # counted with bytes.translate below, for speed
    ),
    "escape_slash": (re.compile(_ESC + rb"/"), re.compile(_RAW + rb"/")),
    "escape_html": (re.compile(_ESC + rb"u00(?:3[cCeE]|26)"), re.compile(rb"[<>&]")),
    "hex_upper": (
        re.compile(_ESC + rb"u[0-9A-F]{0,3}[A-F]"),
        re.compile(_ESC + rb"u[0-9a-f]{0,3}[a-f]"),
    ),
    "short_escapes": (re.compile(_ESC + rb"[bf]"), re.compile(_ESC + rb"u000[8cC]")),
}
_NON_ASCII_BYTES = bytes(range(0x80, 0x100))


def file_evidence(blocks: Iterator[bytes], wanted: set[str]) -> dict[str, bool]:
    """Look through a file's raw bytes for evidence on the style fields in ``wanted``.

    Returns the fields for which evidence was found (by majority within the first block that
    has any); stops reading as soon as every wanted field is settled. Used when a backdoor
    record needs a decision (e.g. it holds a non-ASCII character) that its neighbours cannot make.
    """
    found: dict[str, bool] = {}
    for block in blocks:
        for name in wanted - found.keys():
            yes_re, no_re = _FILE_EVIDENCE[name]
            if name == "ensure_ascii":
                no = len(block) - len(block.translate(None, _NON_ASCII_BYTES))
            else:
                no = len(no_re.findall(block))
            yes = len(yes_re.findall(block))
            if yes != no:  # a tie (or nothing) settles nothing
                found[name] = yes > no
        if found.keys() >= wanted:
            break
    return found
