"""The package's shape: no import cycles (function-level and TYPE_CHECKING imports included), no
module over 450 lines, and no module importing names from the top package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "perhap"
MAX_LINES = 450

Graph = dict[str, set[str]]


# ----------------------------------------------------------------------------- the import graph


def modules(package: Path) -> dict[str, Path]:
    """Every module of a package by dotted name (a package by its own name, for its __init__)."""
    found: dict[str, Path] = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from X import ...`` statement names, relative ones resolved."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(path):
        base = base[:-1]  # a plain module's relative imports start at its package
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (``a.b.c`` -> ``a.b``)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its text, by resolved name.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
    Python also imports a module's parent packages first; those implicit edges are not counted.
    """
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            owner = _owner(target, known)
            if owner is not None and owner != module:
                edges.add(owner)
    return edges


def import_graph(package: Path) -> Graph:
    known = modules(package)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the package's module count
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_cycle_in(group, graph) for group in groups)


def _cycle_in(group: set[str], graph: Graph) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle in {group}")  # a strongly connected group always has one


def describe(found: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in found)


# ----------------------------------------------------------------------------- the package


def test_the_import_graph_is_acyclic() -> None:
    found = cycles(import_graph(PACKAGE))
    assert not found, f"{len(found)} import cycle(s) in perhap/:\n{describe(found)}"


def test_no_module_is_over_450_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules(PACKAGE).items()}
    over = sorted((n, name) for name, n in sizes.items() if n > MAX_LINES)
    assert not over, "modules over 450 lines: " + ", ".join(f"{name} ({n})" for n, name in over)


def test_the_readme_layout_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    missing = []
    for name, path in modules(PACKAGE).items():
        stem = path.parent.name if _is_package(path) else path.stem
        package = name.rsplit(".", 1)[0]  # a __main__ is named by the command that runs it
        if (f"`python -m {package}" if stem == "__main__" else stem) not in layout:
            missing.append(name)
    assert not missing, f"README.md's layout does not name: {', '.join(missing)}"


def readme_layout_order() -> list[str]:
    """The top-level entries of README.md's layout tree (``errors``, ``store``, ...), in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tree = readme[readme.index("```\nperhap/\n") + len("```\nperhap/\n"):]
    order = []
    for line in tree.splitlines():
        if not line.startswith("  "):
            break  # the tree's end (tests/, bench/ ... are outside the package)
        if line[2] != " ":
            order.append(line.split()[0].removesuffix("/").removesuffix(".py"))
    return order


def test_imports_only_go_down_the_readme_layout() -> None:
    # The README promises that a module imports only what its layout lists above it: a reader
    # can learn the package from the top down.
    order = readme_layout_order()
    rank = {name: i for i, name in enumerate(order)}
    graph = import_graph(PACKAGE)
    upward = []
    for module, targets in graph.items():
        top = module.split(".")[1] if "." in module else None
        for target in targets:
            other = target.split(".")[1] if "." in target else None
            if top is None or other is None or top == other:
                continue
            assert top in rank and other in rank, f"README.md's layout does not list {top} or {other}"
            if rank[other] > rank[top]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports going up README.md's layout:\n" + "\n".join(sorted(upward))


def test_no_module_imports_names_from_the_top_package() -> None:
    # `from perhap import X` (or `from .. import X` reaching perhap) inside the package runs
    # perhap/__init__ from the middle of another import: a cycle waiting to happen.
    known = modules(PACKAGE)
    offenders = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and _resolve_from(name, path, node) == "perhap":
                names = [a.name for a in node.names if f"perhap.{a.name}" not in known]
                if names:
                    offenders.append(f"{name}: from perhap import {', '.join(names)}")
    assert not offenders, "\n".join(offenders)


# ----------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_resolves_every_kind_of_import(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .a import thing\n",
        "pkg/a.py": "import os\nfrom . import b\nfrom .sub import deep\n",
        "pkg/b.py": "def f():\n    from .sub.deep import x\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import name\n",
        "pkg/d.py": "import pkg.sub.deep\nimport json.decoder\n",
        "pkg/sub/__init__.py": "from .. import a\nfrom . import deep\n",
        "pkg/sub/deep.py": "from ..b import f\n",
    })
    assert import_graph(pkg) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b", "pkg.sub.deep"},  # os is not ours; `from . import b` names the module
        "pkg.b": {"pkg.sub.deep"},  # inside a function
        "pkg.c": {"pkg.sub"},  # under TYPE_CHECKING; `name` is not a module, so the package
        "pkg.d": {"pkg.sub.deep"},  # no edge to pkg.sub or pkg: parents load implicitly
        "pkg.sub": {"pkg.a", "pkg.sub.deep"},
        "pkg.sub.deep": {"pkg.b"},
    }


def test_checker_finds_a_cycle_and_names_it(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/app.py": "from .server import run\n",
        "pkg/server.py": "def run():\n    from .app import App\n",
        "pkg/cli.py": "from .server import run\n",
        "pkg/top.py": "from pkg import x\n",
        "pkg/x.py": "from . import top\n",
    })
    found = cycles(import_graph(pkg))
    assert found == [["pkg.app", "pkg.server", "pkg.app"], ["pkg.top", "pkg.x", "pkg.top"]]
    assert describe(found) == "pkg.app -> pkg.server -> pkg.app\npkg.top -> pkg.x -> pkg.top"


def test_checker_passes_an_acyclic_graph(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .api import open\n",
        "pkg/api.py": "from .core import model\nfrom .core.store import Store\n",
        "pkg/core/__init__.py": "",
        "pkg/core/model.py": "",
        "pkg/core/store.py": "from . import model\nfrom .model import Event\n",
    })
    graph = import_graph(pkg)
    assert cycles(graph) == []
    assert graph["pkg.api"] == {"pkg.core.model", "pkg.core.store"}


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
    ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, []),  # a diamond is no cycle
    ({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}, [["a", "b", "a"]]),  # one group, one shortest cycle
])
def test_cycles_on_small_graphs(graph: Graph, expected: list[list[str]]) -> None:
    assert cycles(graph) == expected
