"""The posting path's write: every insert and update of a batch in one statement.

`BatchWrite` gathers a batch's rows table by table (the row structs of `_rows`);
`write_batch` sends them in one round trip (the `write` step of `_posting`'s table). The
column lists are derived from `exchange.tables`, never written out by hand.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from exchange.ledger import BalanceAfter, MemberBook, Posting, PostingType
from exchange.store._connection import Connection
from exchange.store._records import COUNTER_SHARDS, NO_REQUEST, IdempotencyRecord, PostingRequest
from exchange.store._rows import (
    AllocationRow,
    EntryRow,
    HoldRow,
    LinkRow,
    LotRow,
    PostingRow,
    column_list,
    written_columns,
)
from exchange.tables import (
    allocations,
    entries,
    holds,
    idempotency_records,
    lots,
    member_links,
    members,
    postings,
)

__all__ = ["BatchWrite", "encode_rows", "json_rows", "write_batch"]


# -- write -----------------------------------------------------------------------------------

# Each table's rows travel as one JSON array of arrays (encoded by msgspec in C, unpacked
# by PostgreSQL), not as one array parameter per column: encoding ~1,000 values through
# the driver's per-value codecs cost five times the CPU on the exchange's side. The
# columns (and their order, which is the row structs' field order) come from
# `exchange.tables`; `tests/unit/test_store_rows.py` keeps the structs in step.
_INSERTED = (postings, entries, lots, allocations, holds, member_links, idempotency_records)
_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    table.name: column_list(table, written_columns(table)) for table in _INSERTED
}
_CHANGED_LOTS = column_list(lots, ("lot_id", "remaining", "matured"))
_CHANGED_HOLDS = column_list(
    holds, ("hold_id", "status", "transaction_id", "captured_points", "closed_at")
)
_DEBTS = column_list(members, ("member_id", "debt"))
# Per-batch sums, not a table's columns: (partner, issued value, liability points, value).
_COUNTERS = (("partner_id", "text"), ("issued", "numeric"), ("points", "bigint"),
             ("value", "numeric"))  # fmt: skip


def json_rows(parameter: int, columns: tuple[tuple[str, str], ...]) -> str:
    """SELECT the columns out of JSON parameter $parameter (an array of row arrays).

    The parameter is read as `jsonb`: parsed once, after which each `->>` picks a field by
    its position. Read as `json` (text), every `->>` parsed its row again from the start,
    19 times for a posting: 7.4-8.8 ms of PostgreSQL CPU to unpack 250 postings against
    3.1 ms as `jsonb` (docs/performance.md, "Seventh round")."""
    fields = []
    for index, (name, kind) in enumerate(columns):
        value = f"e->>{index}"
        if kind == "bytea":
            fields.append(f"decode({value}, 'base64') AS {name}")
        elif kind == "text":
            fields.append(f"{value} AS {name}")
        else:
            fields.append(f"({value})::{kind} AS {name}")
    # Built from the constant column lists above, never from input.
    return f"SELECT {', '.join(fields)} FROM jsonb_array_elements(${parameter}::jsonb) AS e"  # noqa: S608


def _insert(table: str, parameter: int, tail: str = "") -> str:
    columns = _TABLES[table]
    names = ", ".join(name for name, _ in columns)
    return f"INSERT INTO {table} ({names}) {json_rows(parameter, columns)}{tail}"


# Every insert and update of a batch in ONE statement. Sub-statements of a WITH run on
# one snapshot and cannot see each other's rows, so new lots are inserted in their final
# state and only existing lots are updated; foreign keys and the statement-level guards
# (balanced postings, closed periods) are checked when the whole statement ends.
_WRITE_SQL = f"""
WITH
new_postings AS ({_insert("postings", 1)}),
new_entries AS ({_insert("entries", 2)}),
new_lots AS ({_insert("lots", 3)}),
new_allocations AS ({_insert("allocations", 4)}),
new_holds AS ({_insert("holds", 5)}),
changed_lots AS (
    UPDATE lots SET remaining = v.remaining, matured = v.matured
    FROM ({json_rows(6, _CHANGED_LOTS)}) AS v WHERE lots.lot_id = v.lot_id),
changed_holds AS (
    UPDATE holds SET status = v.status, transaction_id = v.transaction_id,
                     captured_points = v.captured_points, closed_at = v.closed_at
    FROM ({json_rows(7, _CHANGED_HOLDS)}) AS v WHERE holds.hold_id = v.hold_id),
changed_debts AS (
    UPDATE members SET debt = v.debt
    FROM ({json_rows(8, _DEBTS)}) AS v WHERE members.member_id = v.member_id),
counters AS (
    INSERT INTO partner_counters (partner_id, shard, issued_value, liability_points,
                                  liability_value)
    SELECT v.partner_id, (pg_backend_pid() % $9::int)::smallint, v.issued, v.points, v.value
    FROM ({json_rows(10, _COUNTERS)}) AS v
    ON CONFLICT (partner_id, shard) DO UPDATE SET
        issued_value = partner_counters.issued_value + excluded.issued_value,
        liability_points = partner_counters.liability_points + excluded.liability_points,
        liability_value = partner_counters.liability_value + excluded.liability_value),
links AS ({_insert("member_links", 11, " ON CONFLICT DO NOTHING")})
SELECT 1
"""  # noqa: S608 - built from the constant column lists above, never from input

_ENCODER = msgspec.json.Encoder(decimal_format="string")


def encode_rows(rows: Iterable[Any]) -> str:
    """Rows (row structs or tuples, in column order) as the JSON parameter of `json_rows`."""
    return _ENCODER.encode(rows).decode()


@dataclass
class BatchWrite:
    """Everything one batch writes, table by table, as rows in `_WRITE_SQL`'s column order."""

    postings: list[PostingRow] = field(default_factory=list)
    entries: list[EntryRow] = field(default_factory=list)
    new_lots: list[LotRow] = field(default_factory=list)
    allocations: list[AllocationRow] = field(default_factory=list)
    new_holds: list[HoldRow] = field(default_factory=list)
    changed_lots: list[tuple[Any, ...]] = field(default_factory=list)
    changed_holds: list[tuple[Any, ...]] = field(default_factory=list)
    debts: list[tuple[Any, ...]] = field(default_factory=list)
    links: list[LinkRow] = field(default_factory=list)
    records: list[IdempotencyRecord] = field(default_factory=list)
    counters: dict[str, list[Any]] = field(
        default_factory=lambda: defaultdict(lambda: [Decimal(0), 0, Decimal(0)])
    )

    def add_books(
        self,
        books: Iterable[MemberBook],
        after: Mapping[uuid.UUID, BalanceAfter],
        requests: Mapping[uuid.UUID, PostingRequest] | None = None,
    ) -> None:
        """The books' new and changed rows; `after` and `requests` by posting id: the
        member's balance right after it, and the request that made it (its key, response
        and signature), stored on the posting's row."""
        for book in books:
            self._add_book(book, after, requests or {})

    def _add_book(
        self,
        book: MemberBook,
        after: Mapping[uuid.UUID, BalanceAfter],
        requests: Mapping[uuid.UUID, PostingRequest],
    ) -> None:
        touched: set[uuid.UUID] = set(book.matured_lots)
        hold_postings: dict[uuid.UUID, uuid.UUID] = {}
        for posting in book.postings:
            self._add_posting(
                book,
                posting,
                after.get(posting.posting_id),
                requests.get(posting.posting_id, NO_REQUEST),
            )
            touched.update(allocation.lot_id for allocation in posting.allocations)
            if posting.type is PostingType.HOLD and posting.hold_id is not None:
                hold_postings[posting.hold_id] = posting.posting_id
        for lot_id in book.new_lots:
            lot = book.lots[lot_id]
            self.new_lots.append(LotRow(
                lot.lot_id, lot.member_id, lot.issuer_id, lot.earn_id, lot.initial, lot.remaining,
                lot.unit_price, lot.available_at, lot.expires_at, lot.matured, lot.created_at,
                lot.source_lot_id,
            ))  # fmt: skip
            counter = self.counters[lot.issuer_id]
            counter[1] += lot.initial
            counter[2] += lot.initial * lot.unit_price
        for lot_id in sorted(touched - book.new_lots):
            lot = book.lots[lot_id]
            self.changed_lots.append((lot_id, lot.remaining, lot.matured))
        for hold_id in book.new_holds:
            hold = book.holds[hold_id]
            self.new_holds.append(HoldRow(
                hold.hold_id, hold.member_id, hold.partner_id, hold.points, hold.status.value,
                hold.reference, hold_postings[hold_id], hold.transaction_id,
                hold.captured_points, hold.created_at, hold.expires_at, hold.closed_at,
            ))  # fmt: skip
        for hold_id in sorted(book.changed_holds - book.new_holds):
            hold = book.holds[hold_id]
            self.changed_holds.append((
                hold_id, hold.status.value, hold.transaction_id, hold.captured_points,
                hold.closed_at,
            ))  # fmt: skip
        if book.debt != book.initial_debt:
            self.debts.append((book.member_id, book.debt))

    def _add_posting(
        self,
        book: MemberBook,
        posting: Posting,
        after: BalanceAfter | None,
        request: PostingRequest,
    ) -> None:
        self.postings.append(PostingRow(
            posting.posting_id, posting.type.value, posting.member_id, posting.partner_id,
            posting.points, posting.reference, posting.reverses, posting.hold_id,
            posting.unit_price, posting.currency, posting.posted_at, posting.available_at,
            posting.expires_at, after.available if after else None, after.held if after else None,
            after.pending if after else None, posting.terms_version, posting.purchase_amount,
            posting.purchase_currency, *msgspec.structs.astuple(request),
        ))  # fmt: skip
        for line, entry in enumerate(posting.entries):
            self.entries.append(EntryRow(
                posting.posting_id, line, entry.account.value, entry.owner, entry.amount,
                posting.posted_at,
            ))  # fmt: skip
        for allocation in posting.allocations:
            self.allocations.append(
                AllocationRow(
                    posting.posting_id, allocation.lot_id, allocation.kind.value, allocation.points
                )
            )
            lot = book.lots[allocation.lot_id]
            counter = self.counters[lot.issuer_id]
            counter[1] += allocation.delta
            counter[2] += allocation.delta * lot.unit_price
        if (
            posting.type in (PostingType.EARN, PostingType.EARN_REVERSAL)
            and posting.unit_price is not None
        ):
            sign = 1 if posting.type is PostingType.EARN else -1
            self.counters[posting.partner_id or ""][0] += sign * posting.points * posting.unit_price

    def add_links(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.links.extend(
            LinkRow(member_id, partner_id) for member_id, partner_id in sorted(set(pairs))
        )

    def add_records(self, records: Iterable[IdempotencyRecord]) -> None:
        """Responses stored in `idempotency_records`, not on a posting of the batch (a key
        whose owner is not the posting's partner: no rule makes one today). Written by a
        statement of their own, only when there are any."""
        self.records.extend(records)

    def arguments(self) -> list[Any]:
        # Counters sorted by partner, so batches meeting on a shard row lock rows in one order.
        counters = [
            (partner_id, issued, points, value)
            for partner_id, (issued, points, value) in sorted(self.counters.items())
            if issued or points or value
        ]
        documents = (
            self.postings, self.entries, self.new_lots, self.allocations, self.new_holds,
            self.changed_lots, self.changed_holds, self.debts,
        )  # fmt: skip
        return [
            *(_ENCODER.encode(rows).decode() for rows in documents),
            COUNTER_SHARDS,
            _ENCODER.encode(counters).decode(),
            _ENCODER.encode(self.links).decode(),
        ]

    @property
    def empty(self) -> bool:
        """Nothing to write at all (a lot that matures empty still changes a row)."""
        parts = (
            self.postings, self.new_lots, self.changed_lots, self.new_holds,
            self.changed_holds, self.debts, self.links, self.records,
        )  # fmt: skip
        return not any(parts)


_RECORDS_SQL = _insert("idempotency_records", 1)


async def write_batch(conn: Connection, batch: BatchWrite) -> None:
    """Write the whole batch in one round trip (two with records apart from postings)."""
    if not batch.empty:
        await conn.execute(_WRITE_SQL, *batch.arguments())
    if batch.records:
        await conn.execute(_RECORDS_SQL, _ENCODER.encode(batch.records).decode())
