"""The code fingerprint of a run: a hash of the source that decides its result.

A run's id (`RunConfig.key`) names the experiment, not the code that ran it, so without this
a run recorded before a change to its rule would be taken as done after it and its stale
figure reported. The fingerprint covers the rule's module and, followed through their
imports, the modules it and the training loop use from the algorithms, models and data
packages (plus every data loader: the registry imports them by name), and nothing else: a
new rule, a report or a criteria change leaves every recorded run current, a change to
`models.layers` makes every run stale. Each module counts by its syntax tree without
docstrings, so comments, docstrings and layout can change without re-running anything.

Modules are found as files under the package's folder, not imported: reading the source of
a rule costs no import of it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent  # the bioplausible package folder

# where imports are followed: the code a training run executes
_FOLLOW = ("bioplausible.algorithms.", "bioplausible.models", "bioplausible.data", "bioplausible.config",
           "bioplausible.paths")
_ROOTS = ("bioplausible.experiments.runner",)
# read by name through the data registry (`data.load`); the CLI and download code are not
_DATA_SKIP = {"cli", "fetch", "download"}


def _source(module: str) -> Path | None:
    """The file of a bioplausible module (package: its __init__.py), None if there is none."""
    parts = module.split(".")
    if parts[0] != "bioplausible":
        return None
    base = _ROOT.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_package(module: str) -> bool:
    path = _source(module)
    return path is not None and path.name == "__init__.py"


def _imports(module: str, tree: ast.AST) -> set[str]:
    """The bioplausible modules `module` imports (at any depth, e.g. inside functions)."""
    pkg = module if _is_package(module) else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("bioplausible"):
                continue
            out.add(target)
            if _is_package(target):  # `from .pkg import mod` may import a module, not a name
                out.update(f"{target}.{a.name}" for a in node.names if _source(f"{target}.{a.name}") is not None)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("bioplausible")}


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _followed(module: str) -> bool:
    return module.startswith(_FOLLOW) or module in _ROOTS


def _data_loaders() -> list[str]:
    path = _source("bioplausible.data")
    return [f"bioplausible.data.{p.stem}" for p in sorted(path.parent.glob("*.py"))
            if p.stem not in _DATA_SKIP | {"__init__"}] if path else []


def _trees(rule_module: str) -> dict[str, ast.Module]:
    """The syntax tree of every module the fingerprint of a rule in `rule_module` covers."""
    trees: dict[str, ast.Module] = {}
    todo = [rule_module, *_ROOTS, *_data_loaders()]
    while todo:
        m = todo.pop()
        if m in trees or not _followed(m) or _source(m) is None:
            continue
        trees[m] = ast.parse(_source(m).read_text())
        todo.extend(_imports(m, trees[m]))
    return trees


def modules(rule_module: str) -> list[str]:
    """The modules whose code the fingerprint of a rule defined in `rule_module` covers."""
    return sorted(_trees(rule_module))


@functools.lru_cache(maxsize=None)
def code_fingerprint(rule: str) -> str:
    """16 hex digits naming the code a run of `rule` executes (see the module docstring)."""
    from ..algorithms import _RULES

    if rule not in _RULES:
        raise ValueError(f"unknown rule {rule!r}")
    h = hashlib.sha256()
    spec = _RULES[rule]  # "module:Class", or one such per architecture
    trees: dict[str, ast.Module] = {}
    for s in (spec.values() if isinstance(spec, dict) else [spec]):
        trees.update(_trees(f"bioplausible.algorithms.{s.split(':')[0]}"))
    for m in sorted(trees):  # each file read and parsed once
        h.update(m.encode() + b"\0")
        h.update(ast.dump(_strip_docstrings(trees[m])).encode() + b"\0")
    return h.hexdigest()[:16]
