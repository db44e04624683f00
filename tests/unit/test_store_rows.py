"""The row structs the store writes, the ledger model and the tables agree field by field.

Pure: no database. A column added to a table (or a field to a ledger class, or to a row
struct) without the others fails here with the names that differ, instead of a write
that silently drops the value or a statement PostgreSQL refuses in production.

The ledger model and the rows differ only where the table says so, and each difference
is written down below (`MODEL_ONLY`, `ROW_ONLY`): child tables hold a posting's entries
and allocations and a hold's draws; rows carry the keys that tie them to their parent
and what the database stores beside the model (the balance after a posting).
"""

from __future__ import annotations

import dataclasses
import types
import typing
import uuid
from datetime import datetime
from decimal import Decimal

import msgspec
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Uuid,
)

from exchange import store, tables
from exchange.ledger import (
    Account,
    Allocation,
    AllocationKind,
    Entry,
    Hold,
    HoldStatus,
    Lot,
    Posting,
    PostingType,
)
from exchange.members.tables import member_idempotency_keys
from exchange.store._rows import written_columns

# Every table the store writes whole rows of, with the struct it writes them as.
ROWS: dict[str, tuple[type[msgspec.Struct], Table]] = {
    "postings": (store.PostingRow, tables.postings),
    "entries": (store.EntryRow, tables.entries),
    "lots": (store.LotRow, tables.lots),
    "allocations": (store.AllocationRow, tables.allocations),
    "holds": (store.HoldRow, tables.holds),
    "member_links": (store.LinkRow, tables.member_links),
    "idempotency_records": (store.IdempotencyRecord, tables.idempotency_records),
}

# Ledger class -> (its row struct, fields only the model has, fields only the row has).
MODEL_ONLY_AND_ROW_ONLY: dict[type, tuple[type[msgspec.Struct], set[str], set[str]]] = {
    Posting: (
        store.PostingRow,
        {"entries", "allocations"},  # rows of `entries` and `allocations`
        # the balance after it, and the request that made it
        {"available_after", "held_after", "pending_after", *tables.REQUEST_COLUMNS},
    ),
    Entry: (store.EntryRow, set(), {"posting_id", "line", "posted_at"}),
    Allocation: (store.AllocationRow, set(), {"posting_id"}),
    Lot: (store.LotRow, set(), set()),
    Hold: (store.HoldRow, {"draws"}, {"hold_posting_id"}),  # draws: the hold posting's
}

# What each column type holds on the Python side (subclasses first).
PYTHON_TYPES: tuple[tuple[type, type], ...] = (
    (Uuid, uuid.UUID),
    (Boolean, bool),
    (Integer, int),
    (Numeric, Decimal),
    (DateTime, datetime),
    (LargeBinary, bytes),
    (String, str),
)
ANNOTATION_NAMES = {"uuid": uuid, "datetime": datetime, "Decimal": Decimal}
# Enum-valued ledger fields are stored as their text.
ENUMS = {PostingType, Account, AllocationKind, HoldStatus}


def _fields(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    return struct.__struct_fields__


def _model_fields(model: type) -> tuple[str, ...]:
    """A ledger class's fields: its frozen records are msgspec structs, its working
    copies (lots, holds) dataclasses."""
    if issubclass(model, msgspec.Struct):
        return _fields(model)
    return tuple(field.name for field in dataclasses.fields(model))


def _annotation(struct: type, name: str) -> tuple[set[type], bool]:
    """The field's non-None types and whether it may be None."""
    # The ledger imports its annotation-only types under TYPE_CHECKING.
    hint = typing.get_type_hints(struct, localns=ANNOTATION_NAMES)[name]
    members = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
    return members - {type(None)}, type(None) in members


def _column_type(column: Column[object]) -> type:
    for kind, python in PYTHON_TYPES:
        if isinstance(column.type, kind):
            return python
    raise AssertionError(f"no Python type for {column.table.name}.{column.name}")


def disagreements(struct: type[msgspec.Struct], table: Table) -> list[str]:
    """How a row struct and its table differ: names, order, types, nullability."""
    found = []
    expected = written_columns(table)
    if _fields(struct) != expected:
        missing = sorted(set(expected) - set(_fields(struct)))
        extra = sorted(set(_fields(struct)) - set(expected))
        found.append(f"{struct.__name__} fields != {table.name} columns: missing {missing}, "
                     f"extra {extra} (or another order)")  # fmt: skip
        return found
    for name in expected:
        column = table.c[name]
        kinds, nullable = _annotation(struct, name)
        if nullable != column.nullable:
            found.append(f"{table.name}.{name}: nullable {column.nullable}, field {nullable}")
        if kinds != {_column_type(column)}:
            found.append(f"{table.name}.{name}: {_column_type(column)}, field {kinds}")
    return found


@pytest.mark.parametrize("table", sorted(ROWS))
def test_each_row_struct_is_its_tables_written_columns_in_order(table: str) -> None:
    struct, definition = ROWS[table]
    assert disagreements(struct, definition) == []


def test_the_store_writes_every_column_but_those_the_database_fills() -> None:
    """What `written_columns` leaves out is only ever a server default (a timestamp)."""
    left_out = {
        name: sorted(c.name for c in table.columns if c.name not in written_columns(table))
        for name, (_, table) in ROWS.items()
    }
    assert left_out == {
        "postings": ["recorded_at"],
        "entries": [],
        "lots": [],
        "allocations": [],
        "holds": [],
        "member_links": ["linked_at"],
        "idempotency_records": ["created_at"],
    }


def test_a_postings_request_is_the_tail_of_its_row() -> None:
    """`BatchWrite` appends a `PostingRequest`'s fields to the posting's row: they are
    the table's request columns, last and in the same order."""
    request = _fields(store.PostingRequest)
    assert request == tables.REQUEST_COLUMNS
    assert _fields(store.PostingRow)[-len(request) :] == request
    for name in request:
        assert _annotation(store.PostingRequest, name) == _annotation(store.PostingRow, name)


@pytest.mark.parametrize("model", list(MODEL_ONLY_AND_ROW_ONLY), ids=lambda m: m.__name__)
def test_each_ledger_class_and_its_row_differ_only_where_the_schema_says(model: type) -> None:
    struct, model_only, row_only = MODEL_ONLY_AND_ROW_ONLY[model]
    model_fields = set(_model_fields(model))
    row_fields = set(_fields(struct))
    assert model_fields - row_fields == model_only
    assert row_fields - model_fields == row_only
    for name in model_fields & row_fields:  # same meaning: same type and nullability
        model_kinds, model_nullable = _annotation(model, name)
        row_kinds, row_nullable = _annotation(struct, name)
        stored = {str if kind in ENUMS else kind for kind in model_kinds}
        assert (stored, model_nullable) == (row_kinds, row_nullable), f"{model.__name__}.{name}"


def test_member_keys_have_the_partner_keys_columns_but_the_owner() -> None:
    """Both scopes of `store.claim_keys`/`store.remember` share one record and one insert."""
    partner = [(c.name, type(c.type), c.nullable) for c in tables.idempotency_records.columns]
    member = [(c.name, type(c.type), c.nullable) for c in member_idempotency_keys.columns]
    assert partner[0][0] == "partner_id"
    assert member[0][0] == "member_id"
    assert partner[1:] == member[1:]


def test_the_check_constraints_list_exactly_the_ledger_enums() -> None:
    checks = {
        (constraint.table.name, str(constraint.name)): str(constraint.sqltext)
        for table in (tables.postings, tables.entries, tables.allocations, tables.holds)
        for constraint in table.constraints
        if constraint.__class__.__name__ == "CheckConstraint"
    }
    for (table, name), enum in {
        ("postings", "type"): PostingType,
        ("entries", "account"): Account,
        ("allocations", "kind"): AllocationKind,
        ("holds", "status"): HoldStatus,
    }.items():
        text = next(sql for (t, n), sql in checks.items() if t == table and n.endswith(name))
        assert text.split(" IN ")[1] == "(" + ", ".join(f"'{e.value}'" for e in enum) + ")"


def test_the_check_catches_a_column_added_to_one_side_only() -> None:
    """The comparison itself: a table with one more column, a struct with one more
    field, a nullability or type that changed: each is reported."""
    extra = Table(
        "postings",
        MetaData(),
        *(column._copy() for column in tables.postings.columns),
        Column("channel", String(16), nullable=True),
    )
    assert disagreements(store.PostingRow, extra) == [
        "PostingRow fields != postings columns: missing ['channel'], extra [] (or another order)"
    ]

    class Wider(store.LinkRow, frozen=True, array_like=True):
        note: str

    assert disagreements(Wider, tables.member_links) == [
        "Wider fields != member_links columns: missing [], extra ['note'] (or another order)"
    ]

    class Loose(msgspec.Struct, frozen=True, array_like=True):
        member_id: str | None
        partner_id: int

    assert disagreements(Loose, tables.member_links) == [
        "member_links.member_id: nullable False, field True",
        f"member_links.partner_id: {str}, field {{{int}}}",
    ]
