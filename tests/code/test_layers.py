"""The packages are layered and imports only point down (docs/architecture.md).

    foundation  models.settings and the small shared types
    library     data_checks, models: no Prefect in them
    steps       tasks: the Prefect tasks, the ledger store, the MLflow adapter, the policy
    flows       flows
    top         the command line, the deployments' entry points, the backtest, the recommendation
                service and the local servers

A module may import from its own layer or any layer below, never from above, and no two modules
import each other, directly or round a longer loop (function-level imports count too: a
cycle hidden inside a function is still a cycle).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("data_checks", "models", "tasks", "flows")
FOUNDATION = {"models.settings", "data_checks.contract", "data_checks.markup", "models.files"}
TOP = {"flows.__main__", "flows.deployed", "flows.backtest", "flows.backtest_harness", "flows.serve", "flows.servers"}
LAYERS = ("foundation", "library", "steps", "flows", "top")
# Modules that import no third-party orchestration: the library must run without a Prefect server.
NO_PREFECT_LAYERS = ("foundation", "library")


def layer_of(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    if module in TOP:
        return "top"
    package = module.split(".")[0]
    return {"data_checks": "library", "models": "library", "tasks": "steps", "flows": "flows"}[package]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The product modules ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    known = set(modules)
    return {module: imports_of(path, module, known) for module, path in modules.items()}


def upward_imports(graph: dict[str, set[str]], layer=layer_of) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(
        f"{a} ({layer(a)}) imports {b} ({layer(b)})"
        for a, targets in graph.items()
        for b in targets
        if rank[layer(b)] > rank[layer(a)]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_every_module_has_a_layer():
    for module in product_modules():
        assert layer_of(module) in LAYERS


def test_imports_only_point_down():
    assert upward_imports(import_graph()) == []


def test_no_circular_imports():
    assert cycles(import_graph()) == []


def test_the_command_line_goes_through_the_flows():
    """The CLI asks flows (flows.commands) for what it shows, never a task module or a store."""
    graph = import_graph()
    assert sorted(m for m in graph["flows.__main__"] if m.startswith("tasks")) == []


def test_the_library_runs_without_prefect():
    offenders = []
    for module, path in product_modules().items():
        if layer_of(module) not in NO_PREFECT_LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{module} imports {n}" for n in names if n.split(".")[0] == "prefect"]
    # models.settings reads a Prefect Secret block lazily (inside secret_block), by design.
    assert [o for o in offenders if not o.startswith("models.settings ")] == []


# The checks themselves: each fails on the fault it is there to catch.


def test_the_check_finds_an_upward_import():
    graph = {"tasks.gates": {"models.settings", "flows.bootstrap"}, "flows.bootstrap": {"tasks.gates"}, "models.settings": set()}
    assert upward_imports(graph) == ["tasks.gates (steps) imports flows.bootstrap (flows)"]


def test_the_check_finds_a_cycle_round_three_modules():
    graph = {"tasks.a": {"tasks.b"}, "tasks.b": {"tasks.c"}, "tasks.c": {"tasks.a"}, "tasks.d": {"tasks.a"}}
    assert cycles(graph) == [["tasks.a", "tasks.b", "tasks.c"]]


def test_the_parser_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    source = tmp_path / "tasks" / "x.py"
    source.parent.mkdir()
    source.write_text("from . import ledger\n\ndef f():\n    from flows.bootstrap import bootstrap\n    import models.train as t\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    known = {"tasks", "tasks.x", "tasks.ledger", "flows", "flows.bootstrap", "models", "models.train"}
    assert imports_of(source, "tasks.x", known) == {"tasks.ledger", "flows.bootstrap", "models.train"}


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_the_foundation_imports_only_the_foundation(module):
    graph = import_graph()
    assert sorted(graph[module] - FOUNDATION) == []


def test_prefect_names_are_the_python_names():
    """What the Prefect UI shows for a task or flow is its Python name in kebab case, so a name
    in a run's graph leads to its code."""
    import importlib

    from prefect import Flow, Task

    named = []
    for module in product_modules():
        if layer_of(module) in NO_PREFECT_LAYERS or module.endswith("__main__"):
            continue
        for attribute, value in vars(importlib.import_module(module)).items():
            # Where it is defined, or a pure function of a lower layer made a task under its own name.
            if isinstance(value, (Task, Flow)) and (value.fn.__module__ == module or attribute == value.fn.__name__):
                named.append((f"{module}.{attribute}", value.name, attribute.replace("_", "-")))
    assert len(named) > 30, named
    assert [(where, name) for where, name, expected in named if name != expected] == []


@pytest.mark.parametrize("module", ["models.pyfunc", "flows.serve"])
def test_serving_imports_no_training_loop(module):
    """The served model (models.recommender) stands apart from training: what serves it never
    loads the training loop, its optimizer or its progress bars."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in ('models.train', 'models.distributed', 'tasks.training') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


# Seconds to import each: a process loads them when it first validates a batch or measures drift.
HEAVY_AT_FIRST_USE = ("evidently", "great_expectations")


def test_importing_the_flows_or_the_service_loads_no_validation_or_drift_library():
    import subprocess
    import sys

    modules = ("flows.rollback", "flows.bootstrap", "flows.continuous_training", "flows.commands", "flows.serve")
    probe = f"import sys, {', '.join(modules)}; print(sorted(m for m in {HEAVY_AT_FIRST_USE!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]", f"importing {', '.join(modules)} imports {done.stdout.strip()}"


def test_the_ledger_and_an_empty_history_load_no_prefect_mlflow_or_torch(tmp_path):
    """`freshrec ledger` reads a SQL table: it starts in under a second, not after the seconds
    Prefect, MLflow and torch take to import (the history needs MLflow only once there are moves)."""
    import subprocess
    import sys

    probe = (
        "import sys; from flows.__main__ import main; "
        "codes = [main(['ledger']), main(['ledger', '--json']), main(['history'])]; "
        "print(codes, sorted(m for m in ('prefect', 'mlflow', 'torch', 'evidently', 'great_expectations') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")} | {"FRESHREC_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[0, 0, 0] []", done.stdout
