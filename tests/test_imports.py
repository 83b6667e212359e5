"""No circle of imports in the package: every module can be read, and changed, from the modules it
imports, which never import it back (issue 21).

The graph is read from the source, not from an import: every ``import`` and ``from ... import``
anywhere in a module (inside functions and ``if TYPE_CHECKING`` blocks too: a deferred import is
still a dependency), relative imports resolved, each repository folder named as pyproject's
``[tool.setuptools.package-dir]`` installs it (``ingest/`` is ``cnnfilterdb.ingest``, ...). An edge
``a -> b`` is drawn when ``a`` imports the module ``b``, or a name from ``b``, or the submodule
``b`` from its package (``from cnnfilterdb import sql``).
"""
from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from .helpers import REPO

PACKAGE = "cnnfilterdb"


def package_folders() -> dict[str, Path]:
    """Each package the distribution installs (pyproject's ``packages``) -> its folder, found as
    setuptools finds it: ``package-dir`` maps a package, and its subpackages below it."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})

    def folder(name: str) -> Path:
        if name in mapped:
            return REPO / mapped[name]
        parent, _, last = name.rpartition(".")
        return folder(parent) / last if parent else REPO / name

    return {name: folder(name) for name in setuptools["packages"]}


def modules() -> dict[str, Path]:
    """Every module the distribution installs: its import name -> its source file."""
    out = {}
    for package, folder in package_folders().items():
        for f in sorted(folder.glob("*.py")):
            out[package if f.name == "__init__.py" else f"{package}.{f.stem}"] = f
    return out


def imported(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of ``known`` that ``module`` (whose source is ``path``) imports, anywhere in it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            targets = [source] + [f"{source}.{a.name}" for a in node.names]
        else:
            continue
        yield from (t for t in targets if t in known and t != module)


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {m: set(imported(m, f, set(found))) for m, f in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle of imports (``[a, b, ..., a]``) in each strongly connected component of more than
    one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    components.append(component)
    out = []
    for component in components:  # a shortest way back to the component's first module
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in {w for v in frontier for w in graph[v]}:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        last = next(v for v in frontier if start in graph[v])
        out.append(paths[last] + [start])
    return out


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_walk_sees_every_module_under_its_installed_name():
    found = modules()
    assert len(found) > 50
    assert found["cnnfilterdb.service.errors"] == REPO / "service" / "errors.py"
    assert found["cnnfilterdb.ingest"] == REPO / "ingest" / "__init__.py"
    assert found["cnnfilterdb.sql"] == REPO / "sql" / "__init__.py"
    assert found["cnnfilterdb.stats.basis"] == REPO / "cnnfilterdb" / "stats" / "basis.py"
    assert not any(m.startswith(("cnnfilterdb.cnnfilterdb", "cnnfilterdb.service.service")) for m in found)
    graph = import_graph()
    # A relative import, a function-level one and a submodule imported from its package are edges.
    assert "cnnfilterdb.stats.basis" in graph["cnnfilterdb.catalog"]
    assert "cnnfilterdb.refit" in graph["cnnfilterdb.store"]  # imported inside StoreTransaction._refresh_basis
    assert "cnnfilterdb.sql" in graph["cnnfilterdb.store"]    # from cnnfilterdb import sql


def test_cycles_are_found():
    """The check itself: a circle, function-level or not, is reported as a path back to its start."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_circle_of_imports():
    found = cycles(import_graph())
    assert not found, "circles of imports:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_store_floors():
    """One job a module, each on a floor above what it needs: the on-disk layout and the catalog's
    readers need no writer; the refit, scans, checksums and Parquet tables that a commit runs do not
    import the commit (store.py); the committed catalog's reader needs no statistics (analysis.py);
    the service's error handlers and its strict request checks do not import each other."""
    graph = import_graph()
    for module in ("layout", "catalog", "checksums", "scan", "refit", "tables", "snapshot"):
        assert f"{PACKAGE}.store" not in reachable(graph, f"{PACKAGE}.{module}") | {f"{PACKAGE}.{module}"}, module
    assert f"{PACKAGE}.analysis" not in reachable(graph, f"{PACKAGE}.reader")
    assert f"{PACKAGE}.analysis" not in reachable(graph, f"{PACKAGE}.snapshot")
    # strict.py raises errors.py's ApiError; errors.py words its messages without strict.py.
    assert f"{PACKAGE}.service.strict" not in reachable(graph, f"{PACKAGE}.service.errors")
