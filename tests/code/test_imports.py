"""The library's import structure: every module imports on its own, the memeops import graph has
no cycle, and no private name is imported across modules.

The graph is read with ``ast`` from every ``import`` / ``from ... import`` of a memeops module,
at the top of a file and inside functions alike (an import inside a function is still a
dependency; hiding a cycle there only defers it). ``from memeops.a import b`` is an edge to the
module ``memeops.a.b`` when that is a module, else to ``memeops.a``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC = REPO_ROOT / "src"
#: where a private cross-module import is looked for
PRIVATE_IMPORT_ROOTS = ("src", "stages", "flows")

#: Private names still imported across modules, in files other engineers own right now:
#: (importing module, module imported from, name) -> who fixes it. The test fails on any new
#: violation, and on an entry here that is fixed (so the list only shrinks).
KNOWN_PRIVATE_IMPORTS: dict[tuple[str, str, str], str] = {
}


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the memeops package."""
    out = {}
    for path in sorted((SRC / "memeops").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def memeops_imports(path: Path, module: str, is_package: bool) -> Iterator[tuple[str, str | None, int]]:
    """``(module imported from, imported name or None, line)`` for every memeops import in ``path``
    (relative imports resolved against ``module``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "memeops" or alias.name.startswith("memeops."):
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "memeops" or base.startswith("memeops."):
                for alias in node.names:
                    yield base, alias.name, node.lineno


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is a module, else its closest enclosing module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the memeops package (self-imports dropped)."""
    modules = module_files()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for base, imported, _ in memeops_imports(path, name, path.name == "__init__.py"):
            target = f"{base}.{imported}" if imported and f"{base}.{imported}" in modules else base
            resolved = owning_module(target, modules)
            if resolved is not None and resolved != name:
                graph[name].add(resolved)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each as a sorted list."""
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
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - a component always has one


def private_imports() -> dict[tuple[str, str, str], str]:
    """``{(importing module, module imported from, name): "file:line"}`` for every private name
    imported from a memeops module in src/, stages/ and flows/."""
    modules = module_files()
    found = {}
    for root in PRIVATE_IMPORT_ROOTS:
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            rel = path.relative_to(SRC if root == "src" else REPO_ROOT)
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            for base, imported, line in memeops_imports(path, name, is_package):
                if imported is None or not imported.startswith("_") or imported.startswith("__"):
                    continue
                if f"{base}.{imported}" in modules:  # a module that happens to start with "_"
                    continue
                found[(name, base, imported)] = f"{path.relative_to(REPO_ROOT)}:{line}"
    return found


# --------------------------------------------------------------------------- the checks


IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "memeops" or m.startswith("memeops.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        failures[name] = f"{type(exc).__name__}: {exc} ({last.filename}:{last.lineno})".replace("\\n", " ")[:400]
print(json.dumps(failures))
"""


def test_every_module_imports_on_its_own(subprocess_env: dict[str, str]) -> None:
    # One process: third-party imports are paid once; memeops.* is dropped from sys.modules
    # before each module, so each one imports with nothing of memeops loaded before it.
    names = list(module_files())
    assert len(names) > 50 and "memeops.serving.pyfunc" in names
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, *names], env=subprocess_env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "modules that fail to import on their own:\n" + "\n".join(
        f"  {name}: {error}" for name, error in failures.items()
    )


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert graph["memeops.serving.pyfunc"] >= {"memeops.serving.predictor", "memeops.serving.folder"}
    cycles = [one_cycle(graph, c) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


def test_no_private_name_is_imported_across_modules() -> None:
    found = private_imports()
    new = {key: where for key, where in found.items() if key not in KNOWN_PRIVATE_IMPORTS}
    assert not new, "private names imported across modules (make them public where they are defined):\n" + "\n".join(
        f"  {where}: from {base} import {name}" for (_, base, name), where in sorted(new.items())
    )
    fixed = sorted(set(KNOWN_PRIVATE_IMPORTS) - set(found))
    assert not fixed, f"fixed, remove from KNOWN_PRIVATE_IMPORTS: {fixed}"


# --------------------------------------------------------------------------- the checkers themselves


def test_cycle_finder_reports_a_cycle_and_passes_a_dag() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    components = [c for c in strongly_connected(graph) if len(c) > 1]
    assert components == [["a", "b", "c"]]
    assert one_cycle(graph, components[0]) == ["a", "b", "c", "a"]
    graph["c"] = {"d"}
    assert all(len(c) == 1 for c in strongly_connected(graph))


def test_import_reader_resolves_modules_relative_and_function_level_imports(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from memeops.serving import inputs\n"
        "from . import folder\n"
        "def f():\n"
        "    from memeops.serving.predictor import _private\n"
        "    import memeops.vision.detect\n",
        encoding="utf-8",
    )
    found = list(memeops_imports(path, "memeops.serving.x", is_package=False))
    assert found == [
        ("memeops.serving", "inputs", 1),
        ("memeops.serving", "folder", 2),
        ("memeops.serving.predictor", "_private", 4),
        ("memeops.vision.detect", None, 5),
    ]
