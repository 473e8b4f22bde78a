"""No import circles in `alpaca_plw` (issue 21): a reader can start at one end of every chain.

The graph is read from the source (`ast`), not from a running interpreter. Every `import X` and
`from X import Y` in a module counts, wherever it stands: at the top, inside a function, under
`if TYPE_CHECKING:` or in a `try:`. A function-level import still ties the two modules together
(it only moves the moment of the import), so it is an edge like any other. An edge goes to the
most specific module of the package that the statement names: `from alpaca_plw.train.checkpoints
import shards` is an edge to `alpaca_plw.train.checkpoints.shards`, `from
alpaca_plw.data.reading.records import ColumnMap` to `alpaca_plw.data.reading.records`, `from
alpaca_plw.version import __version__` to `alpaca_plw.version`.
Not counted: a package's implicit import of its parents (Python's machinery, not the module's
code) and `importlib.import_module(...)` of a name held in a string (the root `__init__`'s lazy
public API), which no reader follows as an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alpaca_plw"


def _modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (see the module docstring for what counts)."""
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    parts = name.split(".")  # a package's __init__ is its package itself
                    base = parts[: len(parts) - node.level + (path.name == "__init__.py")]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                for alias in node.names:
                    full = f"{stem}.{alias.name}"
                    edges.add(full if full in modules else _target(stem, modules))
            elif isinstance(node, ast.Import):
                edges.update(_target(alias.name, modules) for alias in node.names)
        graph[name] = {e for e in edges if e and e != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), each as a path that returns
    to its start: ["a", "b", "a"]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.add(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:  # shortest path back to start, inside the group
        node = queue.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(group)


def test_the_package_has_no_import_circle():
    found = [" -> ".join(cycle) for cycle in circles(import_graph())]
    assert found == [], "import circles:\n" + "\n".join(found)


def test_the_circle_finder_names_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg.a import thing\n")  # reaches the circle, not in it
    assert circles(import_graph(package)) == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]


def test_relative_imports_count_as_edges_too(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "a.py").write_text("from .sub import b\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.b"}, "pkg.sub.b": {"pkg.a"},
                     "pkg.a": {"pkg.sub.b"}}
    assert circles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]
