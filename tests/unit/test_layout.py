"""A task is one module: the generic layers name no task, and processors stay pure.

What a task's result does to the asset (info keys, tags, result hooks, HTTP routes) is declared at
registration (:func:`processors.registry.register`); the sink, the metadata store and the API
read those declarations. So no built-in task's name may appear in their code — comments and
docstrings included (a name in a comment is where a branch on it comes back). The routes of the
face and similarity indexes (``agents/api/routes/faces.py``, ``similarity.py``) and the indexes
themselves (``sinks/indexes/``) ARE task code and are not scanned.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from processors.registry import load_all
from tests.conftest import ROOT

GENERIC = sorted({
    ROOT / "agents" / "streams" / "sink.py",
    *(ROOT / "sinks" / "store").glob("*.py"),
    *(ROOT / "agents" / "api").glob("*.py"),
    ROOT / "agents" / "api" / "routes" / "__init__.py",
})

FORBIDDEN_IN_PROCESSORS = {"confluent_kafka", "faust", "aiokafka", "minio", "agents", "sinks"}


def _names() -> list[str]:
    return sorted(load_all())


def test_the_scanned_files_are_the_generic_layers() -> None:
    rel = {p.relative_to(ROOT).as_posix() for p in GENERIC}
    assert {"agents/streams/sink.py", "sinks/store/metadata.py", "agents/api/app.py",
            "agents/api/guards.py", "agents/api/routes/__init__.py"} <= rel
    assert not {"agents/api/routes/faces.py", "agents/api/routes/similarity.py"} & rel
    assert len(_names()) >= 20  # the built-in tasks (plus any installed plugin)


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_task_is_named_in_the_generic_layers(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = []
    for name in _names():
        # the name as a word of its own: "tag" is named by "the `tag` task", not by "tags"
        for m in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{path.name}:{line}: {name!r} in {text.splitlines()[line - 1].strip()!r}")
    assert not found, "task names in a generic layer (declare it at registration):\n" + \
        "\n".join(found)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement of ``path`` names (also inside functions and
    TYPE_CHECKING blocks), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return sorted(out)


def test_processors_import_nothing_of_kafka_storage_agents_or_sinks() -> None:
    files = sorted((ROOT / "processors").rglob("*.py"))
    assert len(files) > 20
    bad = [f"{p.relative_to(ROOT)}:{line}: import {mod}"
           for p in files for line, mod in _imports(p)
           if mod.split(".")[0] in FORBIDDEN_IN_PROCESSORS]
    assert not bad, "\n".join(bad)


def test_the_import_scan_sees_nested_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from sinks.store import metadata\n"
                     "def f():\n    import faust.types\n    from . import x\n")
    assert _imports(probe) == [(1, "typing"), (3, "sinks.store"), (5, "faust.types")]


def _module_level_imports(path: Path, package_root: Path) -> set[str]:
    """Modules imported at module level (function-level imports run late, on use)."""
    import ast

    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
    return out


def test_no_import_cycle() -> None:
    """The module-level import graph of the four packages has no cycle."""
    root = Path(__file__).resolve().parents[2]
    modules: dict[str, Path] = {}
    for pkg in ("agents", "processors", "sinks", "schemas"):
        for f in (root / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = f
    graph = {m: {i for i in _module_level_imports(f, root) if i in modules and i != m}
             for m, f in modules.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
