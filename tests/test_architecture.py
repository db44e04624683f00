"""The dependency rules of docs/architecture.md, checked by scanning imports (and, for the
ledger core, calls). Each rule names what is forbidden, not who is excused."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exchange", "partners", "settlement")
# The one library the core may import: its frozen records are msgspec structs, which cost
# a third of a frozen dataclass to build (docs/architecture.md, "The core's records"). msgspec
# reads no clock, entropy or I/O; the core uses `Struct`, `field` and `structs.replace`.
CORE_DATA_LIBRARIES = {"msgspec"}
HTTP_MODULES = {
    "exchange.http",
    "exchange.lean",
    "exchange.batches.http",
    "partners.webhooks.http",
    "exchange.health",
    "exchange.members.http",
    "exchange.adjustments_http",
    "exchange.metrics_http",
    "partners.http",
    "settlement.http",
    "settlement.finance_http",
}
# The composition root and the command line know every part; nothing else knows them.
ROOTS = {"exchange.app", "exchange.wiring", "exchange.cli", "exchange.cli_support"}
TOOLS = "exchange.tools"  # the benchmark and the demo: around the product, not in it

# Clocks, randomness, I/O, concurrency, processes: none of it belongs in pure rules.
IMPURE_MODULES = {
    "asyncio", "concurrent", "ctypes", "fcntl", "glob", "http", "io", "logging",
    "mmap", "multiprocessing", "os", "pathlib", "random", "secrets", "select", "selectors",
    "shutil", "signal", "socket", "socketserver", "sqlite3", "ssl", "subprocess", "sys",
    "tempfile", "threading", "time", "urllib", "zoneinfo",
}  # fmt: skip
# Reading the time is a clock, whatever it is called on (datetime.now, date.today, ...).
CLOCK_CALLS = {"now", "utcnow", "today"}
# `uuid.UUID` is a value type; everything else in `uuid` generates ids (clock, randomness).
UUID_VALUE_TYPES = {"UUID"}
DRIVERS = {"asyncpg", "sqlalchemy"}
# Holding an engine or connection to hand to a store is fine; SQL, driver errors and
# driver connections are the database modules' business.
DATABASE_HANDLES = {"sqlalchemy.ext.asyncio"}
# The web console is a presentation leaf over every package, like the composition root.
CONSOLE = "exchange.console"


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
PRODUCT = {name: path for name, path in MODULES.items() if not name.startswith(TOOLS)}
LEDGER_CORE = sorted(
    m for m in MODULES if m == "exchange.ledger" or m.startswith("exchange.ledger.")
)


def _ours(names: set[str]) -> set[str]:
    return {name for name in names if name.split(".")[0] in PACKAGES}


def _is_database_module(module: str) -> bool:
    """exchange.db, and every store and table module (`store`, `store._x`, `tables`)."""
    parts = module.split(".")
    return module == "exchange.db" or "store" in parts or parts[-1] in ("_store", "tables")


def _impurities(path: Path) -> list[str]:
    """Imports of impure modules, clock reads and id generators in one module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
            found += [f"import {name}" for name in sorted(roots & IMPURE_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if root in IMPURE_MODULES:
                found.append(f"from {node.module} import ...")
            if root == "uuid":
                found += [
                    f"from uuid import {a.name}"
                    for a in node.names
                    if a.name not in UUID_VALUE_TYPES
                ]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_CALLS
        ):
            found.append(f".{node.func.attr}() reads a clock (line {node.lineno})")
        if isinstance(node, ast.Attribute):
            is_uuid = isinstance(node.value, ast.Name) and node.value.id == "uuid"
            if is_uuid and node.attr not in UUID_VALUE_TYPES:
                found.append(f"uuid.{node.attr} (line {node.lineno})")
    return found


@pytest.mark.parametrize("module", LEDGER_CORE)
def test_the_ledger_core_has_no_clock_randomness_or_io(module: str) -> None:
    assert _impurities(MODULES[module]) == [], f"{module} must stay pure"


@pytest.mark.parametrize("module", LEDGER_CORE)
def test_the_ledger_core_imports_nothing_but_the_standard_library_and_our_errors(
    module: str,
) -> None:
    imported = _imports(MODULES[module])
    ours = _ours(imported) - {"exchange.errors"}
    assert {name for name in ours if not name.startswith("exchange.ledger")} == set()
    third_party = {
        name.split(".")[0]
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] not in PACKAGES
    }
    assert third_party <= CORE_DATA_LIBRARIES, f"{module} must not depend on {third_party}"


def test_the_impurity_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The scan itself: a module with a clock read, an id generator and I/O is caught."""
    sample = tmp_path / "impure.py"
    sample.write_text(
        "import os\nfrom uuid import UUID, uuid4\nimport datetime\nx = datetime.datetime.now()\n"
    )
    found = _impurities(sample)
    assert found == ["import os", "from uuid import uuid4", ".now() reads a clock (line 4)"]


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
        if name.split(".")[0] not in PACKAGES and name.split(".")[0] not in CORE_DATA_LIBRARIES
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
        if module != "exchange.app"
        and module not in HTTP_MODULES
        and not module.startswith(CONSOLE)
    }
    assert {module: found for module, found in offenders.items() if found} == {}


def test_only_the_composition_root_knows_the_console() -> None:
    offenders = {
        module
        for module, path in MODULES.items()
        if module != "exchange.app"
        and not module.startswith(CONSOLE)
        and any(name.startswith(CONSOLE) for name in _imports(path))
    }
    assert offenders == set()


def _names_app(node: ast.expr) -> bool:
    """`app` or `<anything>.app`: the application object whose state holds the services."""
    return (isinstance(node, ast.Name) and node.id == "app") or (
        isinstance(node, ast.Attribute) and node.attr == "app"
    )


def test_the_console_takes_its_services_as_dependencies() -> None:
    """Console handlers declare the services they use (litestar dependencies, as every
    controller does); none reaches into the application's state for them."""
    offenders = {
        module
        for module, path in MODULES.items()
        if module.startswith(CONSOLE)
        and any(
            isinstance(node, ast.Attribute) and node.attr == "state" and _names_app(node.value)
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    assert offenders == set()


def test_the_ledger_never_imports_settlement() -> None:
    """The exchange's own modules never reach into settlement; only the composition root
    and the command line (which wire every part) and the tools may."""
    offenders = {
        module
        for module, path in PRODUCT.items()
        if module.startswith("exchange.")
        and module not in ROOTS
        and not module.startswith(CONSOLE)
        and any(name.startswith("settlement") for name in _imports(path))
    }
    assert offenders == set()


def test_nothing_in_the_product_imports_the_tools() -> None:
    offenders = {
        module
        for module, path in PRODUCT.items()
        if any(name == TOOLS or name.startswith(TOOLS + ".") for name in _imports(path))
    }
    assert offenders == set()


def test_the_server_and_the_command_line_load_no_tool() -> None:
    """Loading the app and the CLI (what `exchange serve` and every command do) imports
    nothing from exchange/tools; `exchange bench` and `demo` load theirs on demand."""
    code = (
        "import sys, exchange.app, exchange.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('exchange.tools')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    [module for module in sorted(PRODUCT) if not _is_database_module(module)],
)
def test_database_drivers_stay_in_the_database_modules(module: str) -> None:
    """asyncpg and SQLAlchemy (SQL, driver errors, raw connections) are used only in
    exchange.db and the store and table modules; the rest may only pass an engine or a
    connection handle (`sqlalchemy.ext.asyncio`) on to them."""
    driver_imports = {
        name
        for name in _imports(PRODUCT[module])
        if name.split(".")[0] in DRIVERS and name not in DATABASE_HANDLES
    }
    assert driver_imports == set(), f"{module} uses the database driver directly"


def _isort_style(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def _packages() -> list[str]:
    return sorted(name for name, path in MODULES.items() if path.name == "__init__.py")


@pytest.mark.parametrize("package", _packages())
def test_every_package_declares_a_sorted_all_of_names_that_exist(package: str) -> None:
    tree = ast.parse(MODULES[package].read_text())
    declared = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(target, ast.Name) and target.id == "__all__"
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    assert len(declared) == 1, f"{package}/__init__.py needs one __all__"
    names = ast.literal_eval(declared[0]) if declared[0] is not None else None
    assert isinstance(names, list), f"{package}.__all__ must be a list literal"
    assert names == sorted(names, key=_isort_style), f"{package}.__all__ is not sorted"
    assert len(set(names)) == len(names), f"{package}.__all__ repeats a name"
    module = importlib.import_module(package)
    assert [name for name in names if not hasattr(module, name)] == []


def _private_imports(path: Path, module: str) -> list[str]:
    """`from x import _name` where `_name` is not a module of x's own package: a helper
    used by another module is part of its module's interface and is named as such."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
            continue
        for alias in node.names:
            if not alias.name.startswith("_") or alias.name.startswith("__"):
                continue
            if f"{node.module}.{alias.name}" in MODULES and node.module.startswith(package):
                continue  # a package's private module, imported inside that package
            found.append(f"{node.module}.{alias.name}")
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_underscored_name_crosses_a_module(module: str) -> None:
    """Style rule 11 (one word, one meaning): a name with an underscore is its module's own;
    a helper another module needs gets a public name (and its module's `__all__`)."""
    assert _private_imports(MODULES[module], module) == []


def test_the_private_import_scan_sees_a_crossing(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from exchange.ledger._common import _secret\nfrom os import path\n")
    assert _private_imports(source, "exchange.service.mod") == ["exchange.ledger._common._secret"]
