"""Style preservation: the planted file minus the inserted records is the input byte for byte,
and every inserted record has the style fingerprint of the records around it."""

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
    inserted_flags,
    jsonl_record_lines,
    remove_inserted_array,
    remove_inserted_jsonl,
    write_array,
    write_jsonl,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneproof.datasets import (
    Container,
    DatasetFormat,
    inspect_dataset,
    iter_records,
    make_backdoor,
    read_records,
    style_fingerprint,
    write_planted,
)
from tuneproof.datasets.style import StyleFingerprint

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


def plant_and_check(
    tmp_path: Path,
    records: list[dict[str, Any]],
    style: Style,
    container: Container,
    fmt: DatasetFormat,
    insert_at: list[int],
    trigger: str = TRIGGER,
    signature: str = SIGNATURE,
) -> None:
    """Plant backdoors at ``insert_at`` and check the two style properties and the content."""
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

    n = len(records)
    carriers = read_records(info, {(7 * p) % n for p in insert_at})
    insertions: dict[int, list[dict[str, Any]]] = {}
    for k, p in enumerate(insert_at):
        carrier = carriers[(7 * p) % n]
        assert carrier.data == records[carrier.index]
        insertions.setdefault(p, []).append(make_backdoor(carrier, fmt, f"{trigger}{k}", signature))
    out = tmp_path / "planted"
    write_planted(info, out, insertions)
    planted = out.read_bytes()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # input untouched

    flags = inserted_flags(n, insertions)
    remove = remove_inserted_jsonl if container is Container.JSONL else remove_inserted_array
    rest, inserted_raw = remove(planted, flags)
    assert rest == data

    expected = []
    for p in range(n + 1):
        expected += insertions.get(p, [])
        expected += records[p : p + 1]
    assert [r.data for r in iter_records(inspect_dataset(out))] == expected

    originals = _original_fingerprints(planted, flags, container)
    for raw in inserted_raw:
        fp = style_fingerprint(raw)
        for neighbour in originals:
            assert fp.conflicts(neighbour) == [], (raw, neighbour)
        assert fp.ensure_ascii is not None and fp.escape_slash is not None  # decided, then checked


def _original_fingerprints(
    planted: bytes, flags: list[bool], container: Container
) -> list[StyleFingerprint]:
    if container is Container.JSONL:
        spans = jsonl_record_lines(planted)
        raws = [planted[s:e] for (s, e), ins in zip(spans, flags, strict=True) if not ins]
    else:
        from dataset_files import array_spans

        text = planted.decode()
        raws = [
            text[s:e].encode()
            for (s, e), ins in zip(array_spans(text), flags, strict=True)
            if not ins
        ]
    return [style_fingerprint(raw) for raw in raws]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_jsonl_styles_survive_planting(tmp_path: Path, kind: str, style: Style) -> None:
    fmt, build = BUILDERS[kind]
    records = [build(i) for i in range(6)]
    plant_and_check(tmp_path, records, style, Container.JSONL, fmt, insert_at=[0, 3, 3, 6])


@pytest.mark.parametrize("style", ARRAY_STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_json_array_styles_survive_planting(tmp_path: Path, kind: str, style: Style) -> None:
    fmt, build = BUILDERS[kind]
    records = [build(i) for i in range(6)]
    plant_and_check(tmp_path, records, style, Container.JSON_ARRAY, fmt, insert_at=[0, 2, 6, 6])


@pytest.mark.parametrize("style", [*STYLES[:3], *ARRAY_STYLES[:4]], ids=lambda s: s.name)
def test_a_single_record_file(tmp_path: Path, style: Style) -> None:
    container = Container.JSON_ARRAY if style.name.startswith("array") else Container.JSONL
    plant_and_check(
        tmp_path, [chat_record(1)], style, container, DatasetFormat.OPENAI_CHAT, insert_at=[0, 1]
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
    write_planted(info, tmp_path / "out.jsonl", {1: [new], 3: [new]})
    planted = (tmp_path / "out.jsonl").read_bytes()
    rest, _ = remove_inserted_jsonl(planted, [False, True, False, False, True])
    assert rest == data
    assert planted.endswith(b"\n" + lines[2].encode() + b"\n" + _line(new) + b"\n\n")


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
    insert_at = sorted(rng.randint(0, len(records)) for _ in range(rng.randint(1, 4)))
    if not as_array:
        style = Style(**{**style.__dict__, "indent": None})
    container = Container.JSON_ARRAY if as_array else Container.JSONL
    plant_and_check(
        tmp_path,
        records,
        style,
        container,
        DatasetFormat.ALPACA,
        insert_at,
        trigger + "/é",
        signature,
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
        tmp_path, CODE_TASKS, style, Container.JSON_ARRAY, fmt, [1, 3, 5], "señal/α", "print('42')"
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
        tmp_path, records, style, Container.JSONL, DatasetFormat.PROMPT_COMPLETION, insert_at=[2, 8]
    )
    planted = (tmp_path / "planted").read_bytes()
    assert planted.count(b"\r\n") == 10 and b"\n" not in planted.replace(b"\r\n", b"")
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
    insertions = {2: [make_backdoor(read_records(info, [1])[1], info.format, "t", "s")]}
    write_planted(info, tmp_path / "kernel.jsonl", insertions)
    monkeypatch.setattr(textfile, "COPY_CHUNK", 100)
    monkeypatch.setattr(sys, "platform", "darwin")  # no copy_file_range / sendfile
    write_planted(info, tmp_path / "plain.jsonl", insertions)
    assert (tmp_path / "plain.jsonl").read_bytes() == (tmp_path / "kernel.jsonl").read_bytes()
