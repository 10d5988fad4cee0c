"""The shape of the house (docs/architecture.md), checked on the source itself.

- no import cycle between storywatch's modules;
- the pure core imports no I/O library and no edge module;
- the read side (server, HTTP, hub, sessions, writer) reaches the write side only through
  the ports handed in at wiring time: it imports nothing of the ingest, the index, the
  watcher or the repo, not even indirectly;
- every event log backend has ``follow`` (the one way events reach readers);
- no function in ``src/`` is called only by tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "storywatch"

PURE = {
    "story",
    "index",
    "changes",
    "events",
    "filters",
    "session",
    "coalesce",
    "ratelimit",
    "values",
    "inbound",
    "replay",
    "holds",
    "paths",
    "ports",
    "history",
    "catchup",
    "sse",
}
IO_LIBRARIES = {
    "asyncio",
    "socket",
    "ssl",
    "sqlite3",
    "subprocess",
    "websockets",
    "watchfiles",
    "redis",
    "httpx",
    "prometheus_client",
    "concurrent",
    "threading",
    "multiprocessing",
    "logging",
}
EDGES = {
    "app",
    "cli",
    "toolbelt",
    "server",
    "http",
    "writer",
    "watcher",
    "repo",
    "gitdiff",
    "client",
    "ingest",
    "config",
    "metrics",
    "logsetup",
    "log",
    "leader",
    "gcpace",
}
READ_SIDE = {"server", "http", "hub", "session", "writer"}
WRITE_SIDE = {"ingest", "index", "watcher", "repo"}
# Called by a library, not by our code: websockets calls these overrides itself.
CALLED_BY_LIBRARIES = {"handshake", "reject"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}


def imports_of(name: str) -> tuple[set[str], set[str]]:
    """(storywatch modules, top-level outside packages) that ``name`` imports anywhere."""
    tree = ast.parse(MODULES[name].read_text())
    ours: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("storywatch"):
                    ours.add(_ours(alias.name))
                else:
                    outside.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("storywatch"):
                base = _ours(node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    ours.add(sub if sub in MODULES else base)
            elif node.level == 0:
                outside.add(node.module.split(".")[0])
    ours.discard("")
    ours.discard(name)
    return ours, outside


def _ours(dotted: str) -> str:
    return dotted.removeprefix("storywatch").lstrip(".")


GRAPH = {name: imports_of(name)[0] for name in MODULES}


def reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_module_named_here_exists() -> None:
    missing = (PURE | READ_SIDE | WRITE_SIDE) - set(MODULES)
    assert not missing


def test_no_import_cycle() -> None:
    cycles = [name for name in MODULES if name in reachable(name)]
    assert cycles == []


@pytest.mark.parametrize("name", sorted(PURE))
def test_the_pure_core_imports_no_io_and_no_edge(name: str) -> None:
    ours, outside = imports_of(name)
    assert not outside & IO_LIBRARIES, f"{name} imports {outside & IO_LIBRARIES}"
    edges = {m for m in ours if m.split(".")[0] in EDGES}
    assert not edges, f"{name} imports {edges}"


@pytest.mark.parametrize("name", sorted(READ_SIDE))
def test_the_read_side_never_reaches_the_write_side(name: str) -> None:
    reached = reachable(name) & WRITE_SIDE
    assert not reached, f"{name} reaches {reached}"


def test_every_backend_follows_and_the_app_never_probes_the_log() -> None:
    for name in ("log.memory", "log.sqlite", "log.redis"):
        tree = ast.parse(MODULES[name].read_text())
        methods = {
            f.name
            for c in ast.walk(tree)
            if isinstance(c, ast.ClassDef)
            for f in c.body
            if isinstance(f, ast.AsyncFunctionDef)
        }
        assert "follow" in methods, name
    app = ast.parse(MODULES["app"].read_text())
    probes = [
        n
        for n in ast.walk(app)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
    ]
    assert probes == []


def definitions() -> Iterator[tuple[str, str]]:
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield name, node.name


def used_names() -> set[str]:
    used: set[str] = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.name.split(".")[-1])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)  # __all__, handler tables
    return used


def test_no_function_is_only_called_by_tests() -> None:
    used = used_names()
    unused = sorted(
        f"{module}.{func}"
        for module, func in definitions()
        if not (func.startswith("__") and func.endswith("__"))
        and func not in used
        and func not in CALLED_BY_LIBRARIES
        and func != "main"
    )
    assert unused == []
