"""Write a benchmark's results into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->``; other
sections are left untouched. Every section is stamped with the machine and the date.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun it to refresh.\n"


def machine_line() -> str:
    """One line describing this machine: CPU model, whether it has AVX512-BF16 (bfloat16 is
    fast only then: the embedded model runs in float32 without it), cores, memory, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    for line in info:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    if flags:
        cpu += ", AVX512-BF16" if "avx512_bf16" in flags else ", no AVX512-BF16"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def write_section(name: str, title: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section ``name`` of the benchmarks doc with ``body``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n"
        f"*Machine:* {machine_line()}  \n*Date:* {stamp}  \n*Script:* `benchmarks/{name}.py`\n\n"
        f"{body.rstrip()}\n<!-- END {name} -->\n"
    )
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(
        rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->\n?", re.S
    )
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def test_values(report: Any) -> dict[str, tuple[float, bool]]:
    """(log10 p, rejected) per test of a verification report, keyed by its null; a null tested
    twice gets its method's first word: "H0-indep (prefix)", "H0-controls (permutation)"."""
    tests: dict[str, tuple[float, bool]] = {}
    for t in report.tests:
        name = str(t.null)
        if name in tests:
            name = f"{name} ({t.method.split()[0].lower()})"
        tests[name] = (t.log10_p, t.rejects)
    return tests
