"""The house keeps its layers, read from the source (AST, no import run):

- no import circle among harness' modules (every import counts, also one
  inside a function or under TYPE_CHECKING);
- the model is pure: harness.model, the machines, and each device kind's
  ops/model modules reach (transitively) only pure modules, and none of
  them imports an I/O library;
- a device kind is its package and one registry line: every kind in
  harness.devices.KINDS has ops, model, qemu and live modules; the
  runner and the step classes name no kind's modules directly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "harness"

# Pure: what the reference model is made of.
PURE_PREFIXES = ("harness.model", "harness.machines")
PURE_MODULES = {"harness.errors", "harness.units", "harness.toml_keys", "harness.devices",
                "harness.devices.base", "harness.devices.memory_device"}
PURE_DEVICE_PARTS = ("ops", "model", "rules", "driver")
# Libraries that do I/O (or start processes, or talk to a VM).
IO_LIBRARIES = {"os", "subprocess", "socket", "shutil", "tempfile", "pathlib", "paramiko",
                "qemu", "fcntl", "signal", "threading", "asyncio", "urllib", "http", "io",
                "select", "time"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(harness modules, top-level third-party/stdlib names) ``name`` imports."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        for t in targets:
            if t in MODULES:
                inner.add(t)
            elif not t.startswith("harness"):
                outer.add(t.split(".")[0])
    inner.discard(name)
    return inner, outer


GRAPH = {name: _imports(name)[0] for name in MODULES}


def _is_pure(name: str) -> bool:
    if name in PURE_MODULES or name.startswith(PURE_PREFIXES):
        return True
    parts = name.split(".")
    return (len(parts) == 4 and parts[:2] == ["harness", "devices"]
            and parts[3] in PURE_DEVICE_PARTS) or (len(parts) == 3 and parts[1] == "devices"
                                                   and f"{name}.model" in MODULES)


def test_there_is_no_import_circle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == [], "modules importing each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in circles)


def test_the_model_reaches_only_pure_modules() -> None:
    roots = [m for m in MODULES if _is_pure(m)]
    assert "harness.model.predict" in roots and "harness.devices.pc_dimm.model" in roots
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(GRAPH[m])
    live = sorted(m for m in seen if not _is_pure(m))
    assert live == [], f"the pure model imports live modules: {live}"
    for m in sorted(seen):
        io = sorted(_imports(m)[1] & IO_LIBRARIES)
        assert io == [], f"{m} imports {io}: the model does no I/O"


@pytest.mark.parametrize("kind", sorted(__import__("harness.devices").devices.KINDS))
def test_a_device_kind_is_one_package(kind: str) -> None:
    from harness.devices import KINDS, live_of, model_of, ops_of, qemu_of

    package = KINDS[kind]
    for part in ("ops", "model", "qemu", "live"):
        assert f"{package}.{part}" in MODULES, f"{kind}: no {part}.py in {package}"
    assert model_of(kind).kind == kind
    assert ops_of(kind).ADD_KEYS and "device" in ops_of(kind).ADD_KEYS
    for hook in ("plug", "add", "remove", "at_reset", "boot_memory", "after_boot",
                 "after_resume", "after_migrate", "pending", "expected", "observed",
                 "expected_json", "observed_json", "KindState", "JSON_KEY"):
        assert hasattr(live_of(kind), hook), f"{kind}: live.{hook} is missing"
    assert qemu_of(kind).TYPE  # its tag in query-memory-devices


def test_the_run_names_no_device_kind_module() -> None:
    """The runner, the observation and the lifecycle steps reach device
    kinds through the registry only (the add/remove/resize steps may build
    a kind's operations)."""
    generic = [m for m in MODULES if m.startswith("harness.run")
               and m != "harness.run.steps.device"]
    for m in generic:
        kinds = sorted(i for i in GRAPH[m]
                       if i.startswith("harness.devices.") and i.count(".") >= 3)
        assert kinds == [], f"{m} imports device kind modules {kinds}"


def test_no_module_is_over_500_lines_nor_a_run_function_over_80() -> None:
    long_modules = sorted((len(p.read_text().splitlines()), m) for m, p in MODULES.items()
                          if len(p.read_text().splitlines()) > 500)
    assert long_modules == [], f"modules over 500 lines: {long_modules}"
    long_functions = []
    for m, p in MODULES.items():
        if not m.startswith(("harness.run", "harness.devices")):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 80:
                    long_functions.append(f"{m}.{node.name} ({length})")
    assert long_functions == [], f"functions over 80 lines: {long_functions}"
