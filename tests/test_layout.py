"""The package layout's rules, read from the source: data walks one way (datasets -> planting ->
key -> verification -> report), lab/ and audit/ stay on the side, and no two modules import
each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tuneproof"

# what each part of the proof path may never import (lazily or not)
FORBIDDEN = {
    "tuneproof.stats": ("tuneproof.",),  # numpy/scipy only (stats may import stats)
    "tuneproof.datasets": ("tuneproof.report", "tuneproof.cli", "tuneproof.lab", "tuneproof.audit"),
    "tuneproof.backends": (
        "tuneproof.report",
        "tuneproof.cli",
        "tuneproof.lab",
        "tuneproof.audit",
        "tuneproof.planting",
        "tuneproof.verification",
    ),
    "tuneproof.planting": (
        "tuneproof.report",
        "tuneproof.cli",
        "tuneproof.lab",
        "tuneproof.audit",
        "tuneproof.verification",
    ),
    "tuneproof.verification": ("tuneproof.report", "tuneproof.cli", "tuneproof.lab"),
    "tuneproof.report": ("tuneproof.cli", "tuneproof.lab"),
    "tuneproof.types": ("tuneproof.",),
}
ALLOWED_WITHIN = {"tuneproof.stats": "tuneproof.stats"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every tuneproof module ``path`` imports (``top_level_only``: at import time)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tuneproof":
                found |= {f"tuneproof.{alias.name}" for alias in node.names}
            elif node.module.startswith("tuneproof."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tuneproof.")}
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_proof_path_never_imports_presentation_or_the_lab(name: str) -> None:
    for part, forbidden in FORBIDDEN.items():
        if name != part and not name.startswith(part + "."):
            continue
        within = ALLOWED_WITHIN.get(part)
        bad = {
            imported
            for imported in imports(MODULES[name])
            if (
                imported.startswith(forbidden)
                and not (within and imported.startswith(within))
                and imported not in ("tuneproof.errors",)
            )
            or (part == "tuneproof.types" and imported.startswith("tuneproof."))
        }
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_import_cycles_at_import_time() -> None:
    graph = {
        name: {m for m in imports(path, top_level_only=True) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # a package's __init__ importing its own modules is not a cycle back to it
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                if not all(n == cycle[0] or n.startswith(cycle[0] + ".") for n in cycle):
                    raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_modules_stay_small() -> None:
    """No module over 400 lines unless it says why in ``LONG_MODULES``."""
    long = {
        name: len(path.read_text().splitlines())
        for name, path in MODULES.items()
        if len(path.read_text().splitlines()) > 400
    }
    assert not {name: n for name, n in long.items() if name not in LONG_MODULES}, long


LONG_MODULES: dict[str, str] = {}


def test_the_package_accepts_a_range_of_torch_releases() -> None:
    """The Makefile pins the on-disk torch; the package itself must not (users have others)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    wanted = [
        Requirement(r)
        for extra in project["optional-dependencies"].values()
        for r in extra
        if Requirement(r).name == "torch"
    ]
    assert wanted, "torch is declared in an extra"
    for requirement in wanted:
        assert requirement.specifier.contains("2.4.0") and requirement.specifier.contains("2.13.0")
        assert requirement.specifier.contains("2.20.0"), "no upper pin"
