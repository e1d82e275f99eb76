"""The package's import structure: no circle of imports, and no module importing a higher layer.

The layers are written out here, lowest first; a module may import its own layer or lower ones,
never a higher one. Every module of supervisor/ must sit in a layer (a new module gets placed on
purpose). Run as a script to print the figures (circles, upward imports, largest file and class).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "supervisor"

# Lowest first. A name matches a module exactly, or (ending in ".*") every module below it; the
# longest match decides. Inside the daemon each module is a layer of its own: calls point down.
LAYERS: list[tuple[str, ...]] = [
    # leaves: no project imports but these
    (
        "supervisor",
        "supervisor.errors",
        "supervisor.states",
        "supervisor.signames",
        "supervisor.progress",
        "supervisor.queue",
        "supervisor.progress.filetail",
        "supervisor.progress.jsonl",
        "supervisor.queue.gpus",
        "supervisor.queue.scheduling",
        "supervisor.heartbeat",
        "supervisor.notify",
        "supervisor.logs",
        "supervisor.progress.logcap",
        "supervisor.progress.dirwatch",
        "supervisor.demo_sim",
    ),
    # rules and configuration
    (
        "supervisor.outcome",
        "supervisor.progress.patterns",
        "supervisor.rundir",
        "supervisor.settings",
        "supervisor.queue.rules",
        "supervisor.queue.capacity",
    ),
    # the database layer (the only importer of SQLAlchemy)
    ("supervisor.db", "supervisor.db.*"),
    # the process layer (the only one that signals)
    ("supervisor.executors", "supervisor.executors.*"),
    # what reads or serves beside the daemon
    (
        "supervisor.hooks",
        "supervisor.hints",
        "supervisor.cliopen",
        "supervisor.cli.views",
        "supervisor.cli.watchview",
        "supervisor.cli.logview",
        "supervisor.metrics",
        "supervisor.metrics.collector",
        "supervisor.metrics.server",
        "supervisor.retention",
        "supervisor.checks",
        "supervisor.checks.*",
        "supervisor.check",
        "supervisor.cli.demo",
        "supervisor.results",
        "supervisor.plot",
        "supervisor.client",
        "supervisor.client.*",
        "supervisor.resultsview",
    ),
    # the daemon, bottom up
    ("supervisor.daemon.wakeups",),
    ("supervisor.daemon.clock",),
    ("supervisor.daemon.runstate",),
    ("supervisor.daemon.checkpoints",),
    ("supervisor.daemon.outbox",),
    ("supervisor.daemon.resources",),
    ("supervisor.daemon.launchprep",),
    ("supervisor.daemon.recovery",),
    ("supervisor.daemon.tracked",),
    ("supervisor.daemon.lockfile",),
    ("supervisor.daemon.rebuild",),
    ("supervisor.daemon.pruning",),
    ("supervisor.daemon.services",),
    ("supervisor.daemon.watching",),
    ("supervisor.daemon.status",),
    ("supervisor.daemon.queuekeeper",),
    ("supervisor.daemon.progressfeed",),
    ("supervisor.daemon.supervision",),
    ("supervisor.daemon.launcher",),
    ("supervisor.daemon.foreign",),
    ("supervisor.daemon.readopt",),
    ("supervisor.daemon.loop",),
    ("supervisor.daemon.serve",),
    ("supervisor.daemon",),
    # the command line
    ("supervisor.cli", "supervisor.__main__"),
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it, TYPE_CHECKING blocks too)."""

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import sub` imports the submodule; `from pkg import name`, the package
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            for target in targets:
                found = owner(target) if target.split(".")[0] == "supervisor" else None
                if found is not None and found != name:
                    edges[name].add(found)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def layer_of(name: str) -> int | None:
    """The layer a module sits in (its longest matching name), or None if it has none."""
    best: tuple[int, int] | None = None  # (length of the match, layer)
    for level, names in enumerate(LAYERS):
        for pattern in names:
            hit = name.startswith(pattern[:-1]) if pattern.endswith(".*") else name == pattern
            if hit and (best is None or len(pattern) > best[0]):
                best = (len(pattern), level)
    return None if best is None else best[1]


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer up to a higher one, as 'importer -> imported'."""
    found = []
    for name, targets in sorted(edges.items()):
        mine = layer_of(name)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(f"{name} -> {target}")
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if layer_of(m) is None)
    assert unplaced == [], f"place these in LAYERS: {unplaced}"


def test_no_circle_of_imports() -> None:
    assert circles(imports(modules())) == []


def test_no_import_runs_up_a_layer() -> None:
    assert upward(imports(modules())) == []


def test_the_checks_find_what_they_look_for() -> None:
    # The checks themselves, on a made-up graph: a circle and an upward import are seen.
    edges = {
        "supervisor.daemon.loop": {"supervisor.daemon.queuekeeper"},
        "supervisor.daemon.queuekeeper": {"supervisor.daemon.loop"},
        "supervisor.errors": set(),
    }
    assert circles(edges) == [["supervisor.daemon.loop", "supervisor.daemon.queuekeeper"]]
    assert upward(edges) == ["supervisor.daemon.queuekeeper -> supervisor.daemon.loop"]
    assert layer_of("supervisor.db.anything_new") == layer_of("supervisor.db")


def _largest_class(mods: dict[str, Path]) -> tuple[int, str]:
    best = (0, "")
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                best = max(best, (size, f"{name}.{node.name}"))
    return best


if __name__ == "__main__":
    mods = modules()
    edges = imports(mods)
    found, up = circles(edges), upward(edges)
    lines = max((len(p.read_text().splitlines()), n) for n, p in mods.items())
    print(f"modules: {len(mods)}")
    print(f"circles of imports: {len(found)} {found}")
    print(f"imports running up a layer: {len(up)} {up}")
    print(f"largest file: {lines[1]} ({lines[0]} lines)")
    size, cls = _largest_class(mods)
    print(f"largest class: {cls} ({size} lines)")
    sys.exit(1 if found or up else 0)
