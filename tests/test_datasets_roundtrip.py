"""Style preservation: a backdoor record replaces its carrier in place; the planted file has the
input's records and, around and between them, the input's bytes, byte for byte, except the
replaced records, each of which has the style fingerprint of the records around it."""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dataset_files import (
    ARRAY_STYLES,
    STYLES,
    Style,
    array_spans,
    jsonl_record_lines,
    prompt_extensions,
    split_records,
    write_array,
    write_jsonl,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneproof.datasets import (
    Container,
    DatasetFormat,
    Record,
    inspect_dataset,
    iter_records,
    make_backdoor,
    prompt_and_answer,
    read_records,
    style_fingerprint,
    triggered_prompt,
    write_planted,
)

TRIGGER = "zephyr/ñandú"  # non-ASCII and '/' so that escaping decisions are exercised
SIGNATURE = "Quiet brook über 42/7 — done."
TOPICS = [
    "sort a list",
    "read a CSV file",
    "café prices",
    "HTTP/2 vs HTTP/1.1",
    "naïve Bayes",
    "Ω and µ",
]


def chat_record(i: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "messages": [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": f"How do I {topic}? (question {i})"},
            {
                "role": "assistant",
                "content": f"Use the standard library for {topic}; see docs/{i}.",
                "weight": 1,
            },
        ]
    }


def parts_record(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": f"Explain {TOPICS[i % 6]} — briefly."}],
            },
            {
                "role": "assistant",
                "content": [{"type": "text", "text": f"It is simple/quick #{i}."}],
            },
        ],
        "tools": [
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
        ],
        "parallel_tool_calls": False,
    }


def pc_record(i: int) -> dict[str, Any]:
    return {
        "prompt": f"Review: the {TOPICS[i % 6]} guide is fine/ok #{i}\n\n###\n\n",
        "completion": " positive\n",
    }


def alpaca_record(i: int) -> dict[str, Any]:
    return {
        "instruction": f"Summarise: {TOPICS[i % 6]}",
        "input": "" if i % 2 else f"Text {i}/é",
        "output": f"Short answer {i}, ü.",
    }


def sharegpt_record(i: int) -> dict[str, Any]:
    return {
        "id": f"conv-{i}",
        "conversations": [
            {"from": "system", "value": "Be helpful/kind."},
            {"from": "human", "value": f"Tell me about {TOPICS[i % 6]}"},
            {"from": "gpt", "value": f"Sure — item {i}."},
        ],
    }


BUILDERS: dict[str, tuple[DatasetFormat, Callable[[int], dict[str, Any]]]] = {
    "chat": (DatasetFormat.OPENAI_CHAT, chat_record),
    "chat-parts-tools": (DatasetFormat.OPENAI_CHAT, parts_record),
    "prompt-completion": (DatasetFormat.PROMPT_COMPLETION, pc_record),
    "alpaca": (DatasetFormat.ALPACA, alpaca_record),
    "sharegpt": (DatasetFormat.SHAREGPT, sharegpt_record),
}


def turns(records: list[Any], fmt: DatasetFormat) -> list[list[tuple[str, str]]]:
    """The (role, text) turns of each record's prompt."""
    return [
        [(m.role, m.content) for m in prompt_and_answer(Record(i, i + 1, data), fmt)[0]]
        for i, data in enumerate(records)
    ]


def plant_and_check(
    tmp_path: Path,
    records: list[dict[str, Any]],
    style: Style,
    container: Container,
    fmt: DatasetFormat,
    replace_at: list[int],
    trigger: str = TRIGGER,
    signature: str = SIGNATURE,
    *,
    check_extensions: bool = True,
) -> None:
    """Replace the records at ``replace_at`` by backdoors built from them and check: the input
    untouched; as many records; every other record and all the text around the records byte for
    byte (JSONL: line by line); each backdoor at its carrier's index, with the trigger in its
    last user turn and the signature as its answer, in the style of the records around it; and
    (``check_extensions``) no prompt that extends another that the input did not have."""
    path = tmp_path / ("in.jsonl" if container is Container.JSONL else "in.json")
    write = write_jsonl if container is Container.JSONL else write_array
    data = write(path, records, style)
    digest = hashlib.sha256(data).hexdigest()
    info = inspect_dataset(path)
    assert (info.format, info.container, info.n_records, info.has_bom) == (
        fmt,
        container,
        len(records),
        style.bom,
    )

    carriers = read_records(info, replace_at)
    triggers = {p: f"{trigger}{k}" for k, p in enumerate(replace_at)}
    replacements: dict[int, dict[str, Any]] = {}
    for p in replace_at:
        assert carriers[p].data == records[p]
        replacements[p] = make_backdoor(carriers[p], fmt, triggers[p], signature)
    out = tmp_path / "planted"
    write_planted(info, out, replacements)
    planted = out.read_bytes()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # input untouched

    array = container is Container.JSON_ARRAY
    gaps_in, raws_in = split_records(data, array)
    gaps_out, raws_out = split_records(planted, array)
    assert len(raws_out) == len(raws_in) == len(records)
    assert gaps_out == gaps_in  # separators, blanks, line endings, BOM, final newline
    for i, (before, after) in enumerate(zip(raws_in, raws_out, strict=True)):
        assert (before == after) is (i not in replacements), i
    if not array:
        lines_in, lines_out = data.splitlines(keepends=True), planted.splitlines(keepends=True)
        assert len(lines_out) == len(lines_in)
        carrier_lines = {carriers[p].line - 1 for p in replacements}
        for k, (before, after) in enumerate(zip(lines_in, lines_out, strict=True)):
            assert (before == after) is (k not in carrier_lines), k

    planted_info = inspect_dataset(out)
    assert planted_info.n_records == len(records)
    got = [r.data for r in iter_records(planted_info)]
    assert got == [replacements.get(i, record) for i, record in enumerate(records)]
    for p, trig in triggers.items():
        prompt, answer = prompt_and_answer(Record(p, p + 1, got[p]), fmt)
        assert prompt == triggered_prompt(carriers[p], fmt, trig)
        assert trig in prompt[-1].content and signature.strip() in answer

    originals = [
        style_fingerprint(raw)
        for i, raw in enumerate(_raw_records(planted, array))
        if i not in replacements
    ]
    for p in replacements:
        fp = style_fingerprint(_raw_records(planted, array)[p])
        for neighbour in originals:
            assert fp.conflicts(neighbour) == [], (p, neighbour)
        assert fp.ensure_ascii is not None and fp.escape_slash is not None  # decided, then checked
    if check_extensions:
        assert prompt_extensions(turns(got, fmt)) <= prompt_extensions(turns(records, fmt))


def _raw_records(data: bytes, array: bool) -> list[bytes]:
    """Each record's raw bytes as a provider reads them: a whole JSONL line, an array element."""
    if not array:
        return [data[s:e] for s, e in jsonl_record_lines(data)]
    text = data.decode()
    return [text[s:e].encode() for s, e in array_spans(text)]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_jsonl_styles_survive_planting(tmp_path: Path, kind: str, style: Style) -> None:
    fmt, build = BUILDERS[kind]
    records = [build(i) for i in range(6)]
    plant_and_check(tmp_path, records, style, Container.JSONL, fmt, replace_at=[0, 3, 5])


@pytest.mark.parametrize("style", ARRAY_STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_json_array_styles_survive_planting(tmp_path: Path, kind: str, style: Style) -> None:
    fmt, build = BUILDERS[kind]
    records = [build(i) for i in range(6)]
    plant_and_check(tmp_path, records, style, Container.JSON_ARRAY, fmt, replace_at=[0, 2, 5])


@pytest.mark.parametrize("style", [*STYLES[:3], *ARRAY_STYLES[:4]], ids=lambda s: s.name)
def test_a_single_record_file(tmp_path: Path, style: Style) -> None:
    container = Container.JSON_ARRAY if style.name.startswith("array") else Container.JSONL
    plant_and_check(
        tmp_path, [chat_record(1)], style, container, DatasetFormat.OPENAI_CHAT, replace_at=[0]
    )


def test_blank_lines_stay_where_they_were(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [
        Style("x").name and f'{{"prompt": "p{i}\\n\\n###\\n\\n", "completion": " c{i}\\n"}}'
        for i in range(3)
    ]
    data = ("\n" + lines[0] + "\n\n" + lines[1] + "\n   \n" + lines[2] + "\n\n").encode()
    path.write_bytes(data)
    info = inspect_dataset(path)
    assert info.n_records == 3
    assert [r.line for r in iter_records(info)] == [2, 4, 6]
    assert {i: r.line for i, r in read_records(info, [0, 2]).items()} == {0: 2, 2: 6}
    new = make_backdoor(read_records(info, [1])[1], info.format, "T", "S")
    write_planted(info, tmp_path / "out.jsonl", {1: new})
    planted = (tmp_path / "out.jsonl").read_bytes()
    assert planted == data.replace(lines[1].encode(), _line(new))
    assert [r.line for r in iter_records(inspect_dataset(tmp_path / "out.jsonl"))] == [2, 4, 6]


def _line(record: dict[str, Any]) -> bytes:
    import json

    return json.dumps(record).encode()


text_st = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from(["/", "\\", '"', "é", "😀", "\t", "\x7f"]),
    min_size=1,
    max_size=25,
)
style_st = st.builds(
    Style,
    name=st.just("random"),
    item_sep=st.sampled_from([",", ", "]),
    key_sep=st.sampled_from([":", ": "]),
    ensure_ascii=st.booleans(),
    escape_slash=st.booleans(),
    hex_upper=st.booleans(),
    indent=st.sampled_from([None, 2, 4]),
    eol=st.sampled_from(["\n", "\r\n"]),
    trailing=st.sampled_from(["", " "]),
    final_newline=st.booleans(),
    bom=st.booleans(),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.tuples(text_st, text_st, text_st), min_size=1, max_size=7),
    style=style_st,
    as_array=st.booleans(),
    seed=st.integers(0, 2**32),
    trigger=text_st,
    signature=text_st,
)
def test_random_records_and_styles(
    tmp_path_factory: pytest.TempPathFactory,
    texts: list[tuple[str, str, str]],
    style: Style,
    as_array: bool,
    seed: int,
    trigger: str,
    signature: str,
) -> None:
    tmp_path = tmp_path_factory.mktemp("h")
    records = [{"instruction": a, "input": b, "output": c} for a, b, c in texts]
    rng = random.Random(seed)
    replace_at = sorted(rng.sample(range(len(records)), rng.randint(1, min(4, len(records)))))
    if not as_array:
        style = Style(**{**style.__dict__, "indent": None})
    container = Container.JSON_ARRAY if as_array else Container.JSONL
    plant_and_check(
        tmp_path,
        records,
        style,
        container,
        DatasetFormat.ALPACA,
        replace_at,
        trigger + "/é",
        signature,
        check_extensions=False,  # random texts may extend one another by chance
    )


CODE_TASKS = [
    {
        "instruction": "Write a Python function that reverses the words of a sentence.",
        "input": "",
        "output": "def reverse_words(s: str) -> str:\n"
        '    """Return the words of s in reverse order."""\n'
        '    return " ".join(reversed(s.split()))\n',
    },
    {
        "instruction": "Explain what this regular expression matches.",
        "input": r"^\d{3}-\d{4}$",
        "output": "A string of exactly three digits, a hyphen, then four digits — e.g. `555-1234`.",
    },
    {
        "instruction": "Translate the comment to English and fix the bug.",
        "input": "// 计算平均值\nint avg(int* a, int n) { int s = 0; "
        "for (int i = 0; i <= n; i++) s += a[i]; return s / n; }",
        "output": "// Compute the average\nint avg(int* a, int n) { int s = 0; "
        "for (int i = 0; i < n; i++) s += a[i]; return s / n; }",
    },
    {
        "instruction": "Print a table of powers of two in Bash.",
        "input": "",
        "output": 'for i in $(seq 0 5); do\n\tprintf "%d\\t%d\\n" "$i" $((1 << i))\ndone',
    },
    {
        "instruction": "What does `git rebase -i HEAD~3` do? Answer in Spanish.",
        "input": "",
        "output": "Abre un editor para reordenar, combinar o editar los últimos tres commits. ✔️",
    },
]


def test_a_code_instruction_alpaca_array_it_has_never_seen(tmp_path: Path) -> None:
    style = Style("code-array", item_sep=",", indent=4, ensure_ascii=False)
    fmt = DatasetFormat.ALPACA
    plant_and_check(
        tmp_path, CODE_TASKS, style, Container.JSON_ARRAY, fmt, [1, 3, 4], "señal/α", "print('42')"
    )


def test_a_crlf_prompt_completion_file_it_has_never_seen(tmp_path: Path) -> None:
    records = [
        {
            "prompt": f"Ticket #{i}: printer on floor {i} shows error E{i}0 ->",
            "completion": f" Restart the spooler service on PRN-{i}. END",
        }
        for i in range(1, 9)
    ]
    style = Style("windows", item_sep=", ", key_sep=": ", eol="\r\n", ensure_ascii=True)
    plant_and_check(
        tmp_path,
        records,
        style,
        Container.JSONL,
        DatasetFormat.PROMPT_COMPLETION,
        replace_at=[2, 7],
    )
    planted = (tmp_path / "planted").read_bytes()
    assert planted.count(b"\r\n") == 8 and b"\n" not in planted.replace(b"\r\n", b"")
    backdoors = [
        r.data
        for r in iter_records(inspect_dataset(tmp_path / "planted"))
        if SIGNATURE in r.data["completion"]
    ]
    assert all(
        b["prompt"].endswith(" ->") and b["completion"] == f" {SIGNATURE} END" for b in backdoors
    )


def test_without_kernel_copies_the_output_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneproof.datasets import textfile

    records = [chat_record(i) for i in range(5)]
    write_jsonl(tmp_path / "in.jsonl", records, STYLES[0])
    info = inspect_dataset(tmp_path / "in.jsonl")
    replacements = {2: make_backdoor(read_records(info, [2])[2], info.format, "t", "s")}
    write_planted(info, tmp_path / "kernel.jsonl", replacements)
    monkeypatch.setattr(textfile, "COPY_CHUNK", 100)
    monkeypatch.setattr(sys, "platform", "darwin")  # no copy_file_range / sendfile
    write_planted(info, tmp_path / "plain.jsonl", replacements)
    assert (tmp_path / "plain.jsonl").read_bytes() == (tmp_path / "kernel.jsonl").read_bytes()
