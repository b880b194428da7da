"""The shape of the code, checked: Bulwark's packages import one another without cycles, and the
layers point down (the store knows no service, no transport knows the assembly).

Every import counts, also one made inside a function or only for type checking: each is a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "bulwark"

# What each package may not import: the layers below may not reach up.
FORBIDDEN = {
    "store": {"services", "webhooks", "ha", "cluster", "backup", "node", "monitoring", "assembly",
              "http", "web", "ssh", "gitservice", "cli"},
    "git": {"store", "services", "webhooks", "ha", "cluster", "node", "assembly", "http", "web", "ssh", "cli"},
    "services": {"ha", "cluster", "node", "assembly", "http", "web", "ssh", "cli"},
    "node": {"assembly", "http", "web", "ssh", "gitservice", "cli", "monitoring"},
    "http": {"assembly", "web", "cli"},
    "web": {"assembly", "cli"},
    "ssh": {"assembly", "cli"},
}
LEAVES = ("errors", "roles", "levels", "processes", "etcd", "clock", "names", "models", "config", "security")


def _package(parts: tuple[str, ...]) -> str:
    """``bulwark.cluster.router`` -> ``cluster``; ``bulwark.etcd`` -> ``etcd``."""
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[tuple[str, ...]]:
    module = ("bulwark", *path.relative_to(SRC).with_suffix("").parts)
    if module[-1] == "__init__":
        module = module[:-1]
    package = module if path.name == "__init__.py" else module[:-1]
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(tuple(alias.name.split(".")) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
            else:
                target = tuple((node.module or "").split("."))
            found.add(target)
            # ``from bulwark import web`` names the package in the alias.
            found.update((*target, alias.name) for alias in node.names if len(target) == 1)
    return {t for t in found if t[0] == "bulwark"}


def package_graph() -> dict[str, dict[str, set[str]]]:
    """package -> package it imports -> the modules that import it."""
    known = {p.stem for p in SRC.iterdir() if p.is_dir() or p.suffix == ".py"}
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in SRC.rglob("*.py"):
        source = _package(("bulwark", *path.relative_to(SRC).parts))
        source = source.removesuffix(".py")
        for target in _imports(path):
            if len(target) < 2 or target[1] not in known or target[1] == source:
                continue
            graph[source][target[1]].add(str(path.relative_to(SRC.parent)))
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle_when_there_is_one() -> None:
    graph = {"a": {"b": {"a/x.py"}}, "b": {"c": {"b/y.py"}}, "c": {"a": {"c/z.py"}}, "d": {"a": {"d/w.py"}}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": {"a/x.py"}}, "b": {}}) == []


def test_the_graph_reads_bulwarks_own_imports() -> None:
    graph = package_graph()
    # Known edges, so a parser that saw nothing could not pass the checks below.
    assert "bulwark/assembly/__init__.py" in graph["assembly"]["node"]
    assert "store" in graph["services"] and "etcd" in graph["store"]


def test_no_package_imports_another_that_imports_it_back() -> None:
    graph = package_graph()
    found = cycles(graph)
    detail = [
        f"{a} -> {b} in {', '.join(sorted(graph[a][b]))}"
        for group in found for a in group for b in group if b in graph.get(a, {})
    ]
    assert not found, "import cycles between packages:\n" + "\n".join(detail)


def test_the_layers_point_down() -> None:
    graph = package_graph()
    wrong = [
        f"{package} imports {target} in {', '.join(sorted(graph[package][target]))}"
        for package, banned in FORBIDDEN.items() for target in sorted(banned & set(graph.get(package, {})))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_leaf_modules_import_no_other_part_of_bulwark_but_errors() -> None:
    graph = package_graph()
    wrong = {leaf: sorted(set(graph.get(leaf, {})) - {"errors"}) for leaf in LEAVES}
    assert not any(wrong.values()), wrong


def test_only_the_command_line_and_the_assembly_build_a_node() -> None:
    graph = package_graph()
    users = sorted(package for package, targets in graph.items() if "assembly" in targets)
    assert set(users) <= {"cli"}, users


def test_every_module_fits_in_a_head() -> None:
    """About 600 lines at most: past that, a module holds more than one thing (split it at its seam)."""
    long = {str(p.relative_to(SRC.parent)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
