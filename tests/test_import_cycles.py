"""The import graph of our packages has no cycles.

Builds the graph from the AST of every module in vlm_service/, kernels/ and vit_backends/, counting module-level
and function-level imports alike (a function-level import that dodges a cycle at load time is still a cycle in
the design), and fails naming each cycle found. A new cycle then fails CI instead of growing unnoticed. The same
graph checks DESIGN.md's one-way flow (FORBIDDEN). `python tests/test_import_cycles.py` prints what it finds.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vlm_service", "kernels", "vit_backends")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules (`a.b.func` -> `a.b`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported_names(module: str, path: Path, tree: ast.AST) -> list[str]:
    """Dotted names this module imports, relative imports made absolute; `from a import b` yields `a.b`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.extend(f"{base}.{alias.name}" for alias in node.names)
            names.append(base)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the set of our modules it imports (package __init__ edges of one's own parents left out)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {_resolve(name, modules) for name in _imported_names(module, path, tree)}
        # Importing a submodule runs its parent packages' __init__ first; that edge is Python's, not the design's.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
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
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


# DESIGN.md's one-way flow: (importer, packages it must never import)
FORBIDDEN = [
    ("kernels", ("vlm_service", "vit_backends")),
    ("vit_backends", ("vlm_service",)),
    ("vlm_service.engine", ("vlm_service.server", "vlm_service.pipeline", "vlm_service.processor")),
    ("vlm_service.pipeline", ("vlm_service.server",)),
    ("vlm_service.server", ("vlm_service.bench",)),
]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """`importer -> imported` for every edge the FORBIDDEN rules exclude."""
    return [f"{m} -> {t}" for src, banned in FORBIDDEN for m, targets in sorted(graph.items()) if _within(m, src)
            for t in sorted(targets) if any(_within(t, b) for b in banned)]


def test_detector_sees_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_graph_has_edges():
    graph = import_graph()
    assert "vlm_service.server.convert" in graph
    assert any(graph.values())


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layering_sees_a_violation():
    assert layering_violations({"vlm_service.pipeline": {"vlm_service.server.convert"}}) == [
        "vlm_service.pipeline -> vlm_service.server.convert"]


def test_imports_follow_the_one_way_flow():
    violations = layering_violations(import_graph())
    assert not violations, "imports against DESIGN.md's flow: " + "; ".join(violations)


if __name__ == "__main__":
    for cycle in find_cycles(import_graph()):
        print(" <-> ".join(cycle))
    for violation in layering_violations(import_graph()):
        print(violation)
