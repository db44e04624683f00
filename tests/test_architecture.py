"""The dependency rules of docs/architecture.md, checked by scanning imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exchange", "partners", "settlement")
HTTP_MODULES = {"exchange.http", "exchange.health", "partners.http", "settlement.http"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = _modules()


def _ours(names: set[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("exchange.ledger")))
def test_the_ledger_core_is_pure(module: str) -> None:
    imported = _imports(MODULES[module])
    ours = _ours(imported) - {"exchange.errors"}
    assert {name for name in ours if not name.startswith("exchange.ledger")} == set()
    third_party = {
        name.split(".")[0]
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] not in PACKAGES
    }
    assert third_party == set(), f"{module} must not depend on {third_party}"


# The stdlib modules the core may use at run time: data and arithmetic only. No clock,
# entropy, I/O or event loop (time, random, secrets, uuid, os, asyncio...): the caller
# passes `now` and an id factory in, so a rule's result depends on its arguments alone.
PURE_STDLIB = {
    "__future__",
    "collections",
    "collections.abc",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "functools",
    "itertools",
    "math",
    "operator",
    "typing",
}
CLOCK_READS = {"now", "utcnow", "today", "fromtimestamp", "utcfromtimestamp"}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _runtime_imports(tree: ast.AST) -> set[str]:
    """Modules imported when the module runs (`if TYPE_CHECKING:` blocks excluded)."""
    names: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking(node):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        names |= _runtime_imports(node)
    return names


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("exchange.ledger")))
def test_the_ledger_core_reads_no_clock_entropy_or_io(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    stdlib = {
        name
        for name in _runtime_imports(tree)
        if name.split(".")[0] not in PACKAGES and name.split(".")[0] != "exchange"
    }
    assert stdlib - PURE_STDLIB == set(), f"{module} imports {stdlib - PURE_STDLIB}"
    reads = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_READS
    }
    assert reads == set(), f"{module} reads the clock: {reads}"


def test_the_purity_check_sees_a_clock_read() -> None:
    """The check above would catch the generator that used to live in the core."""
    tree = ast.parse(
        "import os\nimport time\nif TYPE_CHECKING:\n    import uuid\n"
        "def f():\n    import secrets\n    return datetime.now()\n"
    )
    assert _runtime_imports(tree) == {"os", "time", "secrets"}


def test_the_settlement_engine_is_pure_arithmetic() -> None:
    """The SQL that measures a period lives in settlement.store; the engine only counts."""
    imported = _runtime_imports(ast.parse(MODULES["settlement.engine"].read_text()))
    assert _ours(imported) <= {"exchange.money"}
    assert imported - _ours(imported) - PURE_STDLIB == set()


def test_http_modules_are_leaves() -> None:
    """Only the composition root (and other HTTP modules, for shared request plumbing)
    may import an HTTP module: services and the ledger never know about HTTP."""
    offenders = {
        module: _ours(_imports(path)) & HTTP_MODULES
        for module, path in MODULES.items()
        if module != "exchange.app" and module not in HTTP_MODULES
    }
    assert {module: found for module, found in offenders.items() if found} == {}


def test_the_ledger_never_imports_settlement() -> None:
    offenders = {
        module
        for module, path in MODULES.items()
        if module.startswith("exchange.")
        and module not in {"exchange.app", "exchange.cli"}
        and any(name.startswith("settlement") for name in _imports(path))
    }
    assert offenders == set()


def test_driver_errors_stop_at_the_store() -> None:
    """Only the stores, the database plumbing and the CLI talk to the driver directly.
    (partners.gateway holds a dedicated connection to LISTEN for key changes.)"""
    allowed = {"exchange.db", "exchange.cli", "exchange.service._ledger", "partners.gateway"}
    offenders = {
        module
        for module, path in MODULES.items()
        if "asyncpg" in {name.split(".")[0] for name in _imports(path)}
        and not module.startswith("exchange.store")
        and module not in allowed
        and not module.startswith("exchange.bench")
    }
    assert offenders == set()
