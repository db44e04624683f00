"""The dependency rules of docs/architecture.md, checked by scanning imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exchange", "partners", "settlement")
HTTP_MODULES = {
    "exchange.http",
    "exchange.health",
    "exchange.members.http",
    "partners.http",
    "settlement.http",
}


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
