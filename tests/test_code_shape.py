"""The package's import graph: no cycles, each part imports only the parts below it (docs/architecture.md),
and the data modules follow the data's path forward only."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# What each part of optsweep may import (docs/architecture.md, "Components"); a part not listed imports none.
ALLOWED = {
    "data": {"errors", "paths"},
    "optim": {"errors", "paths"},
    "services": {"errors"},
    "tracking": {"optim", "paths"},
    "preflight": {"data", "errors", "models", "optim"},
    "sweeper": {"errors", "metric_names", "paths", "preflight", "services"},
    "report": {"config", "errors", "metric_names", "models", "optim", "paths"},
    "training": {"config", "data", "errors", "metric_names", "models", "optim", "paths", "preflight", "sweeper",
                 "tracking"},
}

# A token's path, shard to batch: each module may import only the ones before it.
DATA_PATH = ["shardfile", "c4", "documents", "rows", "stream", "validation", "loader", "datamodule"]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SRC / "optsweep").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The optsweep modules ``name`` imports, at any depth of its code (a function-level import is an edge
    too). A package's own ``__init__`` is not counted as a dependency of its submodules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_itself_through_others():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_each_part_imports_only_the_parts_below_it():
    modules = _modules()
    part = lambda module: module.split(".")[1] if "." in module else module
    for name, path in modules.items():
        for imported in _imports(name, path, modules):
            if part(imported) != part(name) and imported != "optsweep":
                assert part(imported) in ALLOWED.get(part(name), set()), f"{name} imports {imported}"


def test_the_data_modules_import_only_earlier_hops_of_the_path():
    modules = _modules()
    for i, hop in enumerate(DATA_PATH):
        name = f"optsweep.data.{hop}"
        later = {f"optsweep.data.{h}" for h in DATA_PATH[i + 1:]}
        backwards = _imports(name, modules[name], modules) & later
        assert not backwards, f"{name} imports {sorted(backwards)}, which come after it on the data's path"
