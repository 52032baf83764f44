"""Write a record as JSON text in a given style (the inverse of :func:`style_fingerprint`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from json.encoder import (  # type: ignore[attr-defined]
    c_encode_basestring,
    c_encode_basestring_ascii,
)
from typing import Any

from tuneproof.datasets.style import (
    ESCAPE_RE,
    EVIDENCE_FIELDS,
    StyleFingerprint,
    file_evidence,
    style_fingerprint,
)

_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_HTML = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)
# What a backdoor record is written with when neither its neighbours nor the file say otherwise:
# Python's json.dumps defaults (the most common writer of fine-tuning files).
DEFAULT_EVIDENCE = {
    "ensure_ascii": True,
    "escape_slash": False,
    "escape_html": False,
    "hex_upper": False,
    "short_escapes": True,
}


@dataclass(frozen=True)
class RenderStyle:
    """A fully decided style (no unknowns) to write one record with; see StyleFingerprint."""

    item_separator: str = ", "
    key_separator: str = ": "
    padding: str = ""
    indent: str | None = None
    base_indent: str = ""
    newline: str = "\n"
    ensure_ascii: bool = True
    escape_slash: bool = False
    escape_html: bool = False
    hex_upper: bool = False
    short_escapes: bool = True
    key_orders: tuple[tuple[str, ...], ...] = ()


def render(value: Any, style: RenderStyle) -> str:
    """Return ``value`` as JSON text in ``style``: no leading indentation, no line ending.

    Objects whose key set appears in ``style.key_orders`` are written in that key order.
    """
    orders = {frozenset(keys): keys for keys in style.key_orders}
    out: list[str] = []
    _emit(value, style, orders, 0, out)
    return "".join(out)


def _emit(
    value: Any,
    st: RenderStyle,
    orders: dict[frozenset[str], tuple[str, ...]],
    depth: int,
    out: list[str],
) -> None:
    if isinstance(value, str):
        out.append(_string(value, st))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        keys = orders.get(frozenset(value), tuple(value))
        items = [(k, value[k]) for k in keys]
        _container("{", "}", items, st, orders, depth, out)
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        _container("[", "]", [(None, v) for v in value], st, orders, depth, out)
    else:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _container(
    open_: str,
    close: str,
    items: list[tuple[str | None, Any]],
    st: RenderStyle,
    orders: dict[frozenset[str], tuple[str, ...]],
    depth: int,
    out: list[str],
) -> None:
    if st.indent is None:
        inner, sep, end = st.padding, st.item_separator, st.padding
    else:
        inner = st.newline + st.base_indent + st.indent * (depth + 1)
        sep = st.item_separator + inner
        end = st.newline + st.base_indent + st.indent * depth
    out.append(open_ + inner)
    for i, (key, item) in enumerate(items):
        if i:
            out.append(sep)
        if key is not None:
            out.append(_string(key, st) + st.key_separator)
        _emit(item, st, orders, depth + 1, out)
    out.append(end + close)


def _float(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    return float.__repr__(x)


def _string(s: str, st: RenderStyle) -> str:
    if st.ensure_ascii:
        out: str = c_encode_basestring_ascii(s)
    else:
        out = c_encode_basestring(s)
        if not out.isascii() and _SURROGATE_RE.search(out):
            out = _SURROGATE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    if st.escape_slash:
        out = out.replace("/", "\\/")
    if st.escape_html:
        out = out.translate(_HTML)
    if "\\" in out and (st.hex_upper or not st.short_escapes):
        out = ESCAPE_RE.sub(lambda m: _restyle_escape(m.group(1), st), out)
    return out


def _restyle_escape(esc: str, st: RenderStyle) -> str:
    if not st.short_escapes and esc in ("b", "f"):
        esc = "u0008" if esc == "b" else "u000c"
    if st.hex_upper and esc.startswith("u"):
        esc = "u" + esc[1:].upper()
    return "\\" + esc


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def evidence_needed(value: Any) -> set[str]:
    """The evidence fields whose value changes how ``value`` is written (e.g. ``ensure_ascii``
    only matters when some string holds a non-ASCII character)."""
    text = "".join(_strings(value))
    needed = set()
    if not text.isascii():
        needed |= {"ensure_ascii", "hex_upper"}
    if "/" in text:
        needed.add("escape_slash")
    if any(c in text for c in "<>&\u2028\u2029"):
        needed |= {"escape_html", "hex_upper"}
    if any(c < " " and c not in "\n\r\t" for c in text):
        needed |= {"hex_upper", "short_escapes"}
    return needed


def resolve_style(
    neighbours: Sequence[StyleFingerprint],
    value: Any,
    file_evidence: Callable[[set[str]], dict[str, bool]],
) -> RenderStyle:
    """Decide how to write ``value`` between records with the given fingerprints.

    Each field is taken from the first neighbour that knows it (pass the previous record first).
    Escaping questions that matter for ``value`` but that no neighbour settles are asked of the
    whole file through ``file_evidence(fields) -> {field: bool}``; what is still open falls back
    to Python's json.dumps defaults. Key orders of all neighbours are kept, the first one winning.
    """
    style = RenderStyle()
    for name in ("item_separator", "key_separator", "padding"):
        known = [getattr(n, name) for n in neighbours if getattr(n, name) is not None]
        if known:
            style = replace(style, **{name: known[0]})
    first = neighbours[0] if neighbours else None
    if first is not None and first.indent is not None:
        style = replace(
            style, indent=first.indent, base_indent=first.base_indent, newline=first.newline or "\n"
        )
    decided: dict[str, bool] = {}
    for name in EVIDENCE_FIELDS:
        known_bool = [getattr(n, name) for n in neighbours if getattr(n, name) is not None]
        if known_bool:
            decided[name] = known_bool[0]
    open_fields = evidence_needed(value) - decided.keys()
    if open_fields:
        decided.update(file_evidence(open_fields))
    merged = {**DEFAULT_EVIDENCE, **decided}
    orders: dict[frozenset[str], tuple[str, ...]] = {}
    for n in reversed(neighbours):
        orders.update({frozenset(k): k for k in n.key_orders})
    return replace(
        style,
        key_orders=tuple(orders.values()),
        ensure_ascii=merged["ensure_ascii"],
        escape_slash=merged["escape_slash"],
        escape_html=merged["escape_html"],
        hex_upper=merged["hex_upper"],
        short_escapes=merged["short_escapes"],
    )


class ReplacementStyles:
    """Decides how to write the backdoor records that replace records of a text file.

    ``raw_record(k)`` returns the raw bytes of original record k; ``file_blocks()`` iterates
    over the file's bytes (from its first record) for file-wide evidence. Fingerprints and
    evidence are computed once and cached.
    """

    def __init__(
        self,
        raw_record: Callable[[int], bytes],
        n_records: int,
        file_blocks: Callable[[], Iterator[bytes]],
    ) -> None:
        self._raw_record = raw_record
        self._n = n_records
        self._file_blocks = file_blocks
        self._fingerprints: dict[int, StyleFingerprint] = {}
        self._asked: set[str] = set()
        self._evidence: dict[str, bool] = {}

    def fingerprint(self, k: int) -> StyleFingerprint:
        """The style fingerprint of original record k."""
        if k not in self._fingerprints:
            self._fingerprints[k] = style_fingerprint(self._raw_record(k))
        return self._fingerprints[k]

    def neighbours(self, p: int) -> list[StyleFingerprint]:
        """Fingerprints of the record p being replaced (first: it was written by the same hand,
        at the same place, with the same indentation), then of the records just before and just
        after it."""
        return [self.fingerprint(k) for k in (p, p - 1, p + 1) if 0 <= k < self._n]

    def _file_evidence(self, fields: set[str]) -> dict[str, bool]:
        if fields - self._asked:
            self._evidence.update(file_evidence(self._file_blocks(), fields - self._asked))
            self._asked |= fields
        return {f: self._evidence[f] for f in fields if f in self._evidence}

    def render(self, record: Any, neighbours: Sequence[StyleFingerprint]) -> str:
        """``record`` as JSON text in the style of ``neighbours`` (see resolve_style)."""
        return render(record, resolve_style(neighbours, record, self._file_evidence))
