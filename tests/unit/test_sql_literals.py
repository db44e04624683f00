"""The SQL written out in the store modules names posting types and allocation kinds as
string literals (`type = 'burn'`). Each must be a member of the ledger's enum,
the one definition the tables' CHECK constraints are built from: a renamed or misspelt
type would otherwise match no row and silently change a report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exchange.ledger import AllocationKind, PostingType

ROOT = Path(__file__).resolve().parents[2]
STORES = sorted(
    path
    for package in ("exchange", "settlement", "partners")
    for path in (ROOT / package).rglob("*.py")
    if "store" in path.parts or path.stem == "_store"
)
# `type = 'x'`, `type <> 'x'`, `kind = 'x'`, `type IN ('x', 'y')`.
_COMPARED = re.compile(r"\b(type|kind)\s*(?:=|<>|!=)\s*'([a-z_]+)'")
_LISTED = re.compile(r"\btype\s+IN\s*\(([^)]*)\)")
_KNOWN = {
    "type": {str(t) for t in PostingType},
    "kind": {str(k) for k in AllocationKind},
}


def literals(text: str) -> list[tuple[str, str]]:
    found = [(column, value) for column, value in _COMPARED.findall(text)]
    for listed in _LISTED.findall(text):
        found += [("type", value) for value in re.findall(r"'([a-z_]+)'", listed)]
    return found


@pytest.mark.parametrize("path", STORES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_type_and_kind_literal_in_store_sql_is_a_ledger_enum_member(path: Path) -> None:
    unknown = [(c, v) for c, v in literals(path.read_text()) if v not in _KNOWN[c]]
    assert unknown == []


def test_the_literal_scan_sees_a_misspelt_type() -> None:
    sql = "WHERE p.type = 'burns' AND a.kind = 'draw' AND type IN ('earn', 'expiri')"
    found = literals(sql)
    assert ("kind", "draw") in found
    unknown = [(c, v) for c, v in found if v not in _KNOWN[c]]
    assert unknown == [("type", "burns"), ("type", "expiri")]
