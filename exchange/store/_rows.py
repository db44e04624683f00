"""The rows the store writes, one struct per table, and the column lists derived from
`exchange.tables`.

A row struct's fields are its table's columns, in table order, less the columns the
database fills itself (a server default the store never overrides, e.g.
`postings.recorded_at`). `tests/unit/test_store_rows.py` checks that struct, table and
ledger model agree field by field, so a column added to one and not the others fails
there, not in production. Structs are `array_like`: msgspec encodes a batch's rows as
JSON arrays in column order, which `_write` unpacks in PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    String,
    Table,
    Uuid,
)

__all__ = [
    "AllocationRow",
    "EntryRow",
    "HoldRow",
    "LinkRow",
    "LotRow",
    "PostingRow",
    "column_list",
    "sql_type",
    "written_columns",
]


class PostingRow(msgspec.Struct, frozen=True, array_like=True):
    """`postings`: a ledger `Posting` without its entries and allocations (their own
    tables), with the member's balance right after it and the request that made it."""

    posting_id: uuid.UUID
    type: str
    member_id: str
    partner_id: str | None
    points: int
    reference: str | None
    reverses: uuid.UUID | None
    hold_id: uuid.UUID | None
    unit_price: Decimal | None
    currency: str | None
    posted_at: datetime
    available_at: datetime | None
    expires_at: datetime | None
    available_after: int | None
    held_after: int | None
    pending_after: int | None
    terms_version: int | None
    purchase_amount: Decimal | None
    purchase_currency: str | None
    # The request that made it (`_records.PostingRequest`, field for field).
    idempotency_key: str | None
    request_fingerprint: bytes | None
    response_status: int | None
    response: bytes | None
    signature_key_id: str | None
    signature_input: str | None
    signature: str | None
    content_digest: str | None
    signature_base: bytes | None
    batch_id: str | None


class EntryRow(msgspec.Struct, frozen=True, array_like=True):
    """`entries`: a ledger `Entry`, numbered within its posting."""

    posting_id: uuid.UUID
    line: int
    account: str
    owner: str
    amount: int
    posted_at: datetime


class LotRow(msgspec.Struct, frozen=True, array_like=True):
    """`lots`: a ledger `Lot`, field for field."""

    lot_id: uuid.UUID
    member_id: str
    issuer_id: str
    earn_id: uuid.UUID
    initial: int
    remaining: int
    unit_price: Decimal
    available_at: datetime
    expires_at: datetime
    matured: bool
    created_at: datetime
    source_lot_id: uuid.UUID | None


class AllocationRow(msgspec.Struct, frozen=True, array_like=True):
    """`allocations`: a ledger `Allocation` of one posting."""

    posting_id: uuid.UUID
    lot_id: uuid.UUID
    kind: str
    points: int


class HoldRow(msgspec.Struct, frozen=True, array_like=True):
    """`holds`: a ledger `Hold` without its draws (the hold posting's allocations), with
    the posting that reserved its points."""

    hold_id: uuid.UUID
    member_id: str
    partner_id: str
    points: int
    status: str
    reference: str | None
    hold_posting_id: uuid.UUID
    transaction_id: uuid.UUID | None
    captured_points: int | None
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None


class LinkRow(msgspec.Struct, frozen=True, array_like=True):
    """`member_links`: the member is linked to the partner."""

    member_id: str
    partner_id: str


# SQL type names for values unpacked from JSON text. Subclasses before their bases
# (BigInteger is an Integer, Text a String); lengths are left to the column, so a value
# too long fails loudly instead of being cut by a cast.
_SQL_TYPES: tuple[tuple[type, str], ...] = (
    (Uuid, "uuid"),
    (BigInteger, "bigint"),
    (SmallInteger, "smallint"),
    (Integer, "integer"),
    (Numeric, "numeric"),
    (DateTime, "timestamptz"),
    (Boolean, "boolean"),
    (LargeBinary, "bytea"),
    (String, "text"),
)


def sql_type(column: Column[object]) -> str:
    for kind, name in _SQL_TYPES:
        if isinstance(column.type, kind):
            return name
    raise TypeError(f"no SQL type for {column.table.name}.{column.name} ({column.type!r})")


def written_columns(table: Table) -> tuple[str, ...]:
    """The columns the store writes: all but those the database fills (server defaults)."""
    return tuple(column.name for column in table.columns if column.server_default is None)


def column_list(table: Table, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(name, SQL type) of the named columns of `table`; an unknown name fails at import."""
    return tuple((name, sql_type(table.c[name])) for name in names)
