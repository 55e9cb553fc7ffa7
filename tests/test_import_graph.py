"""The package's import graph, read with `ast` (every import, also those inside functions):
no cycles, and no import from a lower layer to a higher one.

Layers, low to high: paths; data, models; config; algorithms; criteria, experiments; brain,
report, the Python API (api.py); the compare pipeline; the command line (cli.py and every subpackage's cli.py, the
typer glue). Layers of one rank do not import each other either."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "src" / "bioplausible"

RANKS = {
    "root": 0, "paths": 0, "errors": 0,  # bioplausible/__init__.py (the version), where files live, the error line
    "data": 1, "models": 1,
    "config": 2,
    "algorithms": 3,
    "criteria": 4, "experiments": 4,
    "brain": 5, "report": 5, "api": 5,
    "pipeline": 6,
    "cli": 7,
}


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = ["bioplausible", *p.relative_to(PKG).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `mod` imports (`from . import x` counts as module x)."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & set(known)
            out |= subs or {target}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in known and m != mod}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def layer(mod: str) -> str:
    parts = mod.split(".")
    if parts[-1] == "cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "root"


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_every_module_has_a_layer():
    assert {layer(m) for m in modules()} <= set(RANKS), {layer(m) for m in modules()} - set(RANKS)


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_down_the_layers():
    bad = [f"{m} ({layer(m)}) imports {n} ({layer(n)})"
           for m, targets in graph().items() for n in sorted(targets)
           if layer(n) != layer(m) and RANKS[layer(n)] >= RANKS[layer(m)]]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("g, expect_cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, False),
])
def test_cycle_finder(g, expect_cycle):
    """The checker itself: it finds a three-module cycle and passes a diamond."""
    assert (find_cycle(g) is not None) == expect_cycle


def test_graph_reader_sees_function_level_and_relative_imports():
    g = graph()
    assert "bioplausible.algorithms.base" in g["bioplausible.algorithms.bp"]
    assert "bioplausible.report" in g["bioplausible.pipeline"]  # imported inside a function
    assert "bioplausible.brain.rsa" in g["bioplausible.brain.compare"]  # `from . import rsa`
