"""The shape docs/architecture.md describes: packages in layers, arrows down, no cycles, small
modules. Read from the source (every import statement, also those inside functions), so a
change that breaks the shape fails here rather than in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PYBUS = Path(__file__).resolve().parent.parent / "pybus"

# docs/architecture.md, "The parts": a package may import its own modules and packages of a
# lower layer only (never one beside it: pubsub does not import rpc).
LAYER = {
    "_native": 0, "_version": 0, "errors": 0,
    "_lifecycle": 0, "_signals": 0,
    "allocator": 1, "_deprecated": 1,
    "metrics": 1, "wire": 1, "tracing": 1,
    "policy": 2, "store": 2,
    "transport": 3,
    "pubsub": 4, "rpc": 4, "workqueue": 4,
    "aio": 5, "jetstream": 5, "testing": 5,
    "__init__": 6,
    "cli": 7,
}
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 120


def _modules() -> dict[str, Path]:
    out = {}
    for p in PYBUS.rglob("*.py"):
        name = ".".join(p.relative_to(PYBUS.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The pybus modules ``name`` imports (a ``from pkg import mod`` counts as ``pkg.mod``)."""
    here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in MODULES and m != name}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    assert {_package(m) for m in MODULES} <= set(LAYER), "add the new package to LAYER"


def test_arrows_point_down():
    wrong = sorted(
        f"{a} imports {b}" for a, deps in GRAPH.items() for b in deps
        if _package(a) != _package(b) and LAYER[_package(b)] >= LAYER[_package(a)]
    )
    assert wrong == []


def test_no_import_cycles():
    # Tarjan's strongly connected components over the module graph; the package __init__
    # files that re-export their own modules are the one allowed back-edge (child -> parent)
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name):
    src = MODULES[name].read_text()
    assert len(src.splitlines()) <= MAX_MODULE_LINES
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for f in ast.walk(ast.parse(src))
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("pyx", sorted(p.name for p in (PYBUS / "_native").glob("*.pyx")))
def test_compiled_modules_stay_small_too(pyx):
    # a Cython module is a module: the same bound (its functions are not parsed here)
    assert len((PYBUS / "_native" / pyx).read_text().splitlines()) <= MAX_MODULE_LINES


def test_the_checks_can_fail():
    # the graph really contains what the layers forbid to reverse
    assert "pybus.transport.sockets" in GRAPH["pybus.transport.security"]
    assert any(_package(d) == "transport" for d in GRAPH["pybus.pubsub.publisher"])
