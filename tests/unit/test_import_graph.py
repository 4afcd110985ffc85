"""The import graph of edgekit, edgekit.converters and edgekit.runtimes, read from the source.

Every import counts: module level, inside functions and under TYPE_CHECKING, since each is a
dependency a reader has to follow. Importing `edgekit.a.b` also runs the package `edgekit.a`, so a
module depends on each subpackage above what it imports (the facade `edgekit` runs first for every
module, and counts only where it is imported by name).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# where each installed package's source lives (pyproject's package-dir)
SOURCES = {"edgekit": ROOT / "edgekit", "edgekit.converters": ROOT / "converters",
           "edgekit.runtimes": ROOT / "runtimes"}
# the base that both halves stand on: nothing here imports a job, the facade or the CLI
BASE = {"edgekit.errors", "edgekit.signals", "edgekit.artifact", "edgekit.paths", "edgekit.cache",
        "edgekit.metrics", "edgekit.hardware", "edgekit.children", "edgekit.progress", "edgekit.version",
        "edgekit.bundled", "edgekit.quiet"}
JOBS = ("edgekit.conversion", "edgekit.quality", "edgekit.summaries", "edgekit.server", "edgekit.cli")


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if name.startswith("edgekit.edgekit") or "__pycache__" in path.parts:
                continue
            found[name] = path
    # edgekit/converters and edgekit/runtimes do not exist as folders: package-dir maps them
    return {name: path for name, path in found.items()
            if not (path.is_relative_to(SOURCES["edgekit"]) and name.split(".")[1:2] in (["converters"],
                                                                                           ["runtimes"]))}


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, with the packages above each."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, path, node)
            named = {f"{module}.{alias.name}" for alias in node.names}
            targets.update(named)  # submodules imported by name
            if not named <= known:  # `from pkg import submodule` uses the package only to reach it
                targets.add(module)
    edges: set[str] = set()
    for target in targets:
        parts = target.split(".")
        if target in known:
            edges.add(target)
        for i in range(2, len(parts)):
            candidate = ".".join(parts[:i])
            if candidate in known and candidate != name:
                edges.add(candidate)
    # a module's own packages run before it: they are not its dependencies
    return {e for e in edges if e != name and not name.startswith(e + ".")}


@functools.cache  # read once: a dozen tests ask, and the sources do not change under them
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle_and_a_clean_graph():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_checker_reads_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "edgekit" / "summaries"
    pkg.mkdir(parents=True)
    source = pkg / "summarizer.py"
    source.write_text("from . import chunking\nfrom ..errors import X\nfrom .. import version\n"
                      "def f():\n    import edgekit.quality.a\n")
    known = {"edgekit", "edgekit.summaries", "edgekit.summaries.chunking", "edgekit.errors",
             "edgekit.quality", "edgekit.quality.a", "edgekit.summaries.summarizer", "edgekit.version"}
    assert imports("edgekit.summaries.summarizer", source, known) == {
        "edgekit.summaries.chunking", "edgekit.errors", "edgekit.version", "edgekit.quality",
        "edgekit.quality.a"}


def test_every_module_is_seen():
    found = modules()
    assert {"edgekit", "edgekit.engine", "edgekit.converters.source", "edgekit.runtimes.base"} <= set(found)
    assert len(found) > 40


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_halves_never_import_each_other_nor_the_jobs():
    edges = graph()
    bad = []
    for name, targets in edges.items():
        for half, other in (("edgekit.converters", "edgekit.runtimes"),
                            ("edgekit.runtimes", "edgekit.converters")):
            if name.startswith(half + "."):
                bad += [(name, t) for t in targets if t.startswith(other)]
                # the halves stand on the base only: never the facade, the engine or a job
                bad += [(name, t) for t in targets
                        if not t.startswith(half) and t not in BASE]
    assert bad == []


@pytest.mark.parametrize("module", sorted(BASE))
def test_the_base_imports_no_job(module):
    targets = graph().get(module)
    if targets is None:
        pytest.skip(f"{module} does not exist")
    assert sorted(t for t in targets if t.startswith(JOBS) or t == "edgekit.engine") == []
