"""Style fingerprints and the style-preserving JSON writer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dataset_files import Style, dumps
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneproof.datasets import style_fingerprint
from tuneproof.datasets.render import RenderStyle, render, resolve_style

RECORD = {
    "messages": [
        {"role": "user", "content": "Café a/b <tag> & \u0007"},
        {"role": "assistant", "content": "ok"},
    ]
}


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        (Style("default"), {"item_separator": ", ", "key_separator": ": ", "ensure_ascii": True}),
        (
            Style("compact", item_sep=",", key_sep=":"),
            {"item_separator": ",", "key_separator": ":"},
        ),
        (Style("raw", ensure_ascii=False), {"ensure_ascii": False}),
        (Style("slash", escape_slash=True), {"escape_slash": True}),
        (Style("noslash"), {"escape_slash": False, "escape_html": False}),
        (Style("upper", hex_upper=True), {"hex_upper": True}),
        (Style("lower"), {"hex_upper": False}),
    ],
)
def test_fingerprint_reads_the_style_json_dumps_wrote(
    style: Style, expected: dict[str, Any]
) -> None:
    fp = style_fingerprint((dumps(RECORD, style) + "\n").encode())
    for name, value in expected.items():
        assert getattr(fp, name) == value, name
    assert fp.indent is None
    assert fp.line_ending == "\n"
    assert fp.key_orders == (("messages",), ("role", "content"))


def test_fingerprint_of_a_line_with_crlf_and_trailing_blanks() -> None:
    fp = style_fingerprint(b'  {"a":1,"b":[1,2]}  \t\r\n')
    assert (fp.leading, fp.trailing, fp.line_ending) == ("  ", "  \t", "\r\n")
    assert (fp.item_separator, fp.key_separator) == (",", ":")


def test_fingerprint_without_evidence_says_unknown() -> None:
    fp = style_fingerprint(b'{"a": "plain ascii"}')
    assert fp.ensure_ascii is None and fp.escape_slash is None and fp.hex_upper is None
    assert fp.line_ending is None
    assert fp.item_separator is None  # a single key: no item separator to see


@pytest.mark.parametrize("indent", [2, 4, "\t"])
def test_fingerprint_of_a_pretty_printed_array_element(indent: int | str) -> None:
    text = json.dumps([RECORD], indent=indent)
    start, end = text.index("{"), text.rindex("}") + 1
    fp = style_fingerprint(text[start:end].encode())
    unit = indent if isinstance(indent, str) else " " * indent
    assert fp.indent == unit
    assert fp.base_indent == unit  # elements sit one level deep
    assert fp.newline == "\n"
    assert fp.item_separator == ","


def test_conflicts_name_the_differing_fields_only() -> None:
    a = style_fingerprint(b'{"a": "\\u00e9", "b": 1}\n')
    b = style_fingerprint(b'{"b":1,"a":"x"}\n')
    assert set(a.conflicts(b)) == {"item_separator", "key_separator", "key_orders"}
    assert a.conflicts(style_fingerprint(b'{"a": "y", "b": 2}')) == []


def test_render_writes_keys_in_the_neighbours_order() -> None:
    neighbour = style_fingerprint(b'{"content":"x","role":"user"}\n')
    style = resolve_style([neighbour], {}, lambda fields: {})
    assert render({"role": "user", "content": "hi"}, style) == '{"content":"hi","role":"user"}'


def test_resolve_asks_the_file_only_for_what_matters() -> None:
    neighbour = style_fingerprint(b'{"a": "plain"}\n')
    asked: list[set[str]] = []

    def evidence(fields: set[str]) -> dict[str, bool]:
        asked.append(fields)
        return {"ensure_ascii": False}

    assert (
        render({"a": "ascii only"}, resolve_style([neighbour], {"a": "ascii only"}, evidence))
        == '{"a": "ascii only"}'
    )
    assert asked == []
    value = {"a": "naïve"}
    assert render(value, resolve_style([neighbour], value, evidence)) == '{"a": "naïve"}'
    assert asked and "ensure_ascii" in asked[0]


def test_render_escapes_like_go_and_php_when_asked() -> None:
    value = {"u": "<a href='/x'>é</a>&\b"}
    go = RenderStyle(item_separator=",", key_separator=":", ensure_ascii=False, escape_html=True)
    assert render(value, go) == '{"u":"\\u003ca href=\'/x\'\\u003eé\\u003c/a\\u003e\\u0026\\b"}'
    php = RenderStyle(escape_slash=True, short_escapes=False, hex_upper=True)
    assert render(value, php) == '{"u": "<a href=\'\\/x\'>\\u00E9<\\/a>&\\u0008"}'


def test_render_escapes_lone_surrogates_even_in_raw_mode() -> None:
    text = render({"a": "x\ud800y"}, RenderStyle(ensure_ascii=False))
    assert text == '{"a": "x\\ud800y"}'
    text.encode("utf-8")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    value=json_values,
    ensure_ascii=st.booleans(),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (",", ": ")]),
    indent=st.sampled_from([None, 2, 4, "\t"]),
)
def test_render_equals_json_dumps_for_python_styles(
    value: Any, ensure_ascii: bool, separators: tuple[str, str], indent: int | str | None
) -> None:
    unit = None if indent is None else (indent if isinstance(indent, str) else " " * indent)
    style = RenderStyle(
        item_separator=separators[0],
        key_separator=separators[1],
        ensure_ascii=ensure_ascii,
        indent=unit,
    )
    expected = json.dumps(value, ensure_ascii=ensure_ascii, separators=separators, indent=indent)
    assert render(value, style) == expected


records = st.dictionaries(
    st.sampled_from(["instruction", "input", "output", "id"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30),
    min_size=2,
)


@settings(max_examples=200, deadline=None)
@given(
    value=records,
    ensure_ascii=st.booleans(),
    escape_slash=st.booleans(),
    hex_upper=st.booleans(),
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
)
def test_fingerprint_of_rendered_text_agrees_with_the_style(
    value: dict[str, str],
    ensure_ascii: bool,
    escape_slash: bool,
    hex_upper: bool,
    separators: tuple[str, str],
) -> None:
    style = RenderStyle(
        item_separator=separators[0],
        key_separator=separators[1],
        ensure_ascii=ensure_ascii,
        escape_slash=escape_slash,
        hex_upper=hex_upper,
    )
    text = render(value, style)
    assert json.loads(text) == value
    fp = style_fingerprint(text.encode())
    assert fp.item_separator == separators[0]
    assert fp.key_separator == separators[1]
    assert fp.key_orders == (tuple(value),)
    assert fp.ensure_ascii in (None, ensure_ascii)
    assert fp.escape_slash in (None, escape_slash)
    assert fp.hex_upper in (None, hex_upper)
    text_all = "".join(value.values())
    if not text_all.replace("\u2028", "").replace("\u2029", "").isascii():  # those two: ambiguous
        assert fp.ensure_ascii == ensure_ascii
    if "/" in text_all:
        assert fp.escape_slash == escape_slash
