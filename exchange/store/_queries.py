"""Ledger SQL off the hot path, on the same asyncpg connection: the settlement barrier's
exclusive side, enrolment, history and transaction reads, liability counters.

Reads return the row structs of `_rows` (the columns the store writes), so a posting or
hold read back has exactly the fields it was written with.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.store._connection import Connection, driver_of
from exchange.store._records import SETTLEMENT_BARRIER_KEY
from exchange.store._rows import HoldRow, PostingRow
from exchange.tables import holds, postings

__all__ = [
    "close_journal_until",
    "create_member",
    "fetch_hold",
    "fetch_posting",
    "is_linked",
    "liability_by_issuer",
    "list_postings",
]

_POSTING_COLUMNS = ", ".join(PostingRow.__struct_fields__)
_HOLD_COLUMNS = ", ".join(HoldRow.__struct_fields__)

# -- the settlement barrier -------------------------------------------------------------------


async def close_journal_until(conn: Connection, until: datetime) -> datetime:
    """Settlement: wait for in-flight postings, then close the journal before `until`.
    Returns the previous closing time. Must run in its own short database transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", SETTLEMENT_BARRIER_KEY)
    previous: datetime = await conn.fetchval("SELECT closed_until FROM ledger_state WHERE id = 1")
    if until > previous:
        await conn.execute("UPDATE ledger_state SET closed_until = $1 WHERE id = 1", until)
    return previous


async def liability_by_issuer(
    conn: Connection | AsyncConnection,
) -> dict[str, tuple[int, Decimal]]:
    """Outstanding points per issuing partner and their value at the issue price each was
    posted at: a sum over a few counter rows per partner, cheap at any moment. (Lots past
    their expiry count until the sweep or the member's next posting expires them.)
    Also takes a SQLAlchemy connection: reports and tests read it outside any store work."""
    rows = await (await driver_of(conn)).fetch(
        "SELECT partner_id, sum(liability_points) AS points, sum(liability_value) AS value "
        "FROM partner_counters GROUP BY partner_id"
    )
    return {row["partner_id"]: (int(row["points"]), row["value"]) for row in rows}


# -- members ----------------------------------------------------------------------------------

_CREATE_MEMBER_SQL = """
WITH member AS (
    INSERT INTO members (member_id, reference, enrolled_by, created_at)
    VALUES ($1, $2, $3, $4) RETURNING member_id)
INSERT INTO member_links (member_id, partner_id)
SELECT member_id, $3 FROM member
ON CONFLICT DO NOTHING
"""


async def create_member(
    conn: Connection, member_id: str, reference: str | None, partner_id: str, now: datetime
) -> None:
    """The member, linked to the enrolling partner (one statement)."""
    await conn.execute(_CREATE_MEMBER_SQL, member_id, reference, partner_id, now)


async def is_linked(conn: Connection, member_id: str, partner_id: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM member_links WHERE member_id = $1 AND partner_id = $2",
        member_id,
        partner_id,
    )
    return found is not None


# -- transactions and holds -------------------------------------------------------------------


def _posting(row: Any) -> PostingRow:
    return PostingRow(*row)


async def fetch_posting(conn: Connection, posting_id: uuid.UUID) -> PostingRow | None:
    row = await conn.fetchrow(
        f"SELECT {_POSTING_COLUMNS} FROM {postings.name} WHERE posting_id = $1",  # noqa: S608
        posting_id,
    )
    return _posting(row) if row is not None else None


async def fetch_hold(conn: Connection, hold_id: uuid.UUID) -> HoldRow | None:
    row = await conn.fetchrow(
        f"SELECT {_HOLD_COLUMNS} FROM {holds.name} WHERE hold_id = $1",  # noqa: S608
        hold_id,
    )
    return HoldRow(*row) if row is not None else None


async def list_postings(
    conn: Connection,
    *,
    types: Sequence[str],
    limit: int,
    partner_id: str | None = None,
    member_id: str | None = None,
    reference: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    posted_after: datetime | None = None,
    posted_before: datetime | None = None,
) -> list[PostingRow]:
    """Postings newest first, keyset-paginated on (posted_at, posting_id); optionally only
    those posted in [posted_after, posted_before)."""
    # Only the filters asked for, so each query shape gets the plan (and index) it needs.
    filters = ["type = ANY($1::text[])"]
    arguments: list[Any] = [list(types)]
    for condition, value in (
        ("posted_at >= ${}", posted_after),
        ("posted_at < ${}", posted_before),
        ("partner_id = ${}", partner_id),
        ("member_id = ${}", member_id),
        ("reference = ${}", reference),
    ):
        if value is not None:
            arguments.append(value)
            filters.append(condition.format(len(arguments)))
    if before is not None:
        arguments.extend(before)
        at, posting = len(arguments) - 1, len(arguments)
        filters.append(f"(posted_at, posting_id) < (${at}::timestamptz, ${posting}::uuid)")
    arguments.append(limit)
    query = (
        f"SELECT {_POSTING_COLUMNS} FROM postings WHERE {' AND '.join(filters)} "  # noqa: S608
        f"ORDER BY posted_at DESC, posting_id DESC LIMIT ${len(arguments)}"
    )
    rows = await conn.fetch(query, *arguments)
    return [_posting(row) for row in rows]
