"""The package's import graph: no cycles (function-level imports count), and the light modules stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "cbmir"


def module_name(path: Path) -> str:
    """``cbmir/models/vit.py`` -> ``cbmir.models.vit``; ``cbmir/models/__init__.py`` -> ``cbmir.models``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_names(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """Every name an import anywhere in ``tree`` loads (absolute; ``from a import b`` gives ``a.b``), with its line.

    Imports inside functions, ``try`` or ``if`` blocks count: they are edges all the same once they run.
    """
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append((node.args[0].value, node.lineno))
    return names


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module that importing ``name`` runs: its longest prefix that is a module (``a.b`` may be a class)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported package module: line of the first such import}."""
    modules = package_modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = graph.setdefault(module, {})
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            target = resolve(name, modules)
            if target is not None and target != module:
                edges[target] = min(line, edges.get(target, line))
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in graph[node]:
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if succ in members and succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    """One line per edge of the cycle, with the file and line of the import that makes it."""
    modules = package_modules()
    steps = [
        f"{a} -> {b} ({modules[a].relative_to(PACKAGE_DIR.parent)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:])
    ]
    return "\n    ".join(steps)


def test_the_graph_sees_lazy_and_relative_imports():
    tree = ast.parse("from . import b\nfrom .c import d\n\ndef f():\n    import cbmir.e\n    from ..x import y\n")
    names = [name for name, _ in imported_names(tree, "cbmir.pkg.a", is_package=False)]
    assert names == ["cbmir.pkg.b", "cbmir.pkg.c.d", "cbmir.e", "cbmir.x.y"]
    modules = {"cbmir": Path(), "cbmir.pkg": Path(), "cbmir.pkg.b": Path(), "cbmir.pkg.c": Path(), "cbmir.x": Path()}
    assert [resolve(n, modules) for n in names] == ["cbmir.pkg.b", "cbmir.pkg.c", "cbmir", "cbmir.x"]
    assert resolve("numpy.linalg", modules) is None
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"]]
    assert one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    tangles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not tangles, "import cycles in cbmir (break them; lazy imports count):\n  " + "\n  ".join(
        f"{', '.join(c)} import each other, e.g.\n    {describe(graph, one_cycle(graph, c))}" for c in tangles
    )


@pytest.mark.parametrize("module", ["cbmir.layout", "cbmir.safety.files", "cbmir.logs"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning')))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PACKAGE_DIR.parent, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]", f"importing {module} loads {proc.stdout.strip()}"
