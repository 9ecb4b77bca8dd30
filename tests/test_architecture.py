"""The house rules a reader relies on, checked on the source: no module of orchestrator/ imports
itself back through others (lazy and TYPE_CHECKING imports count: they hide a cycle, they do not
remove it), and the packages that read specs, compare, render and store never load the Docker SDK."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "orchestrator"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_by(name: str, path: Path, known: set[str]) -> set[str]:
    """Every orchestrator module `name` imports, wherever the import statement stands."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1)
                         if ".".join(parts[:i]) in known)
    found.discard(name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_by(name, path, set(found)) for name, path in found.items()}


def test_the_cycle_finder_finds_a_lazy_cycle_and_passes_a_chain():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_inside_functions_and_type_checking_blocks_are_read(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from orchestrator.runner import PreparedRun\n"
                      "def f():\n    from orchestrator.store import db\n"
                      "    import orchestrator.execution.local\n")
    known = {"orchestrator", "orchestrator.runner", "orchestrator.store", "orchestrator.store.db",
             "orchestrator.execution", "orchestrator.execution.local"}
    assert imported_by("orchestrator.m", source, known) == known - {"orchestrator"}


def test_no_module_of_orchestrator_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 40, "the walk found orchestrator's modules"
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(
        " <-> ".join(group) for group in cycles)


@pytest.mark.parametrize("package", ["orchestrator.spec", "orchestrator.compare",
                                     "orchestrator.reports", "orchestrator.store"])
def test_reading_specs_comparing_rendering_and_storing_never_load_the_docker_sdk(package):
    # Every module of the package, in a fresh interpreter: another test's imports cannot mask one.
    names = sorted(n for n in modules() if n == package or n.startswith(package + "."))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'docker' in sys.modules:\n"
            "        print(name)\n"
            "        break\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {result.stdout.strip()} loads the Docker SDK"
