"""Every third-party module the package imports is a declared dependency: a test venv holds
more (the extras' dependencies), so an undeclared import passes the tests and then fails on a
user's plain `pip install` (as `click`, which typer no longer requires, once did)."""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# import name -> distribution, where they differ; PIL ships with matplotlib (pillow)
DIST = {"sklearn": "scikit-learn", "PIL": "matplotlib", "tomli_w": "tomli-w"}


def test_imports_are_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda req: re.split(r"[\[=<>! ]", req, maxsplit=1)[0].lower()  # noqa: E731
    required = {name(r) for r in meta["dependencies"]}
    extras = {name(r) for reqs in meta["optional-dependencies"].values() for r in reqs}
    top_level, lazy = set(), set()
    for p in (ROOT / "src" / "bioplausible").rglob("*.py"):
        tree = ast.parse(p.read_text())
        module_level = {id(n) for n in tree.body}
        for n in ast.walk(tree):
            mods = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                    [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else [])
            for m in mods:
                m = m.split(".")[0]
                if m in sys.stdlib_module_names or m == "bioplausible":
                    continue
                (top_level if id(n) in module_level else lazy).add(m)
    dist = lambda m: DIST.get(m, m).lower()  # noqa: E731
    undeclared = sorted(m for m in top_level | lazy if dist(m) not in required | extras)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    # an extra's module may only be imported where it is needed (inside a function)
    assert not sorted(m for m in top_level if dist(m) not in required), "extras imported at module level"
