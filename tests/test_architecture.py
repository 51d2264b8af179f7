"""The layers of ARCHITECTURE.md, held against the code: every import (at the top of a module, inside a
function, or for type checking only) points down a layer or stays in its own room, and no modules import
each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "runtimes", "exporters")

# Bottom to top. A module may import its own layer and the layers of lower rank; layers of one rank
# (runtimes, exporters) are strangers to each other.  `harness.demo` is imported by no one (builders are
# named by import path) and imports only the core.
LAYERS: list[tuple[str, int, tuple[str, ...]]] = [
    ("core", 0, ("harness.core", "harness")),
    ("runtimes", 1, ("runtimes",)),
    ("exporters", 1, ("exporters",)),
    ("demo", 1, ("harness.demo",)),
    ("data", 2, ("harness.data",)),
    ("tasks", 3, ("harness.tasks",)),
    ("spec", 4, ("harness.spec",)),
    ("run", 5, ("harness.run",)),
    ("judge", 6, ("harness.judge",)),
    ("report", 7, ("harness.report",)),
    ("analysis", 8, ("harness.analysis",)),
    ("faces", 9, ("harness.api", "harness.cli", "harness.pytest_plugin", "harness.entry", "harness.__main__")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def layer_of(module: str) -> tuple[str, int]:
    """The layer whose longest prefix names the module."""
    best: tuple[int, str, int] | None = None
    for name, rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), name, rank)
    assert best is not None, f"{module} is in no layer of tests/test_architecture.py (and ARCHITECTURE.md): place it"
    return best[1], best[2]


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that `module` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module and target.split(".")[0] in PACKAGES:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imports(module, path, known) for module, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_import_points_down_a_layer_or_stays_in_its_room() -> None:
    wrong = []
    for module, targets in sorted(graph().items()):
        layer, rank = layer_of(module)
        for target in sorted(targets):
            other, other_rank = layer_of(target)
            if other != layer and (other_rank >= rank or other == "demo"):
                wrong.append(f"{module} ({layer}) imports {target} ({other})")
    assert not wrong, "imports against the layers of ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle() -> None:
    found = circles(graph())
    assert not found, "circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_check_sees_what_it_guards() -> None:
    """The import reader finds lazy and type-checking imports, and the circle finder finds a circle."""
    edges = graph()
    assert "harness.spec.models" in edges["harness.spec.suite"]  # imported inside ModelSpec.build
    assert "harness.run.executors" in edges["harness.run.execute"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def defined_names(path: Path) -> set[str]:
    """Names bound at the top of a module: definitions, assignments and imports (also under `if`/`try`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def test_every_import_of_ours_names_something_that_exists() -> None:
    """`from harness.x import y` in the code, the tests and the scripts: y is a module or a name bound in x (a
    moved module or function is found here, not when the one command that imports it lazily runs)."""
    known = modules()
    defined = {module: defined_names(path) for module, path in known.items()}
    sources = [*known.values(), *(ROOT / "tests").glob("*.py"), *(ROOT / "scripts").glob("*.py"), *(ROOT / "examples").glob("*.py")]
    dangling = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module and node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    if node.module not in known or (f"{node.module}.{alias.name}" not in known and alias.name not in defined[node.module]):
                        dangling.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                dangling += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in PACKAGES and a.name not in known
                ]
    assert not dangling, "imports of nothing:\n" + "\n".join(dangling)


def test_harness_top_level_holds_the_faces_and_the_layers() -> None:
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert len(top) <= 10, top
    assert all(layer_of(module_name(ROOT / "harness" / name))[0] in ("faces", "core") for name in top), top
