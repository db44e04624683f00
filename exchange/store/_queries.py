"""Ledger SQL off the hot path, through SQLAlchemy Core: the settlement barrier's
exclusive side, single idempotent operations (enrolment, sessions), history and
transaction reads, liability counters.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.store._records import SETTLEMENT_BARRIER_KEY, IdempotencyRecord, StoredResponse
from exchange.tables import (
    holds,
    idempotency_keys,
    ledger_state,
    member_links,
    members,
    partner_counters,
    postings,
)

__all__ = [
    "claim_idempotency_keys",
    "close_journal_until",
    "create_member",
    "fetch_hold",
    "fetch_posting",
    "is_linked",
    "liability_by_issuer",
    "list_postings",
    "save_idempotency",
]

# -- the settlement barrier -------------------------------------------------------------------


async def close_journal_until(conn: AsyncConnection, until: datetime) -> datetime:
    """Settlement: wait for in-flight postings, then close the journal before `until`.
    Returns the previous closing time. Must run in its own short database transaction."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SETTLEMENT_BARRIER_KEY})
    previous: datetime = (
        await conn.execute(select(ledger_state.c.closed_until).where(ledger_state.c.id == 1))
    ).scalar_one()
    if until > previous:
        await conn.execute(
            update(ledger_state).where(ledger_state.c.id == 1).values(closed_until=until)
        )
    return previous


# -- idempotency ------------------------------------------------------------------------------


async def claim_idempotency_keys(
    conn: AsyncConnection, claims: Sequence[tuple[str, str]]
) -> tuple[set[tuple[str, str]], dict[tuple[str, str], StoredResponse]]:
    """Try-lock each (partner_id, key) and read what is stored for the ones we got.

    A key whose lock another transaction holds is being processed right now: the caller
    answers 409. The lock is released at commit, after the stored response is visible.
    """
    if not claims:
        return set(), {}
    partner_ids = [partner_id for partner_id, _ in claims]
    keys = [key for _, key in claims]
    locked_rows = await conn.execute(
        text(
            "SELECT c.partner_id, c.key, pg_try_advisory_xact_lock("
            "hashtextextended(c.partner_id || chr(31) || c.key, 0)) AS locked "
            "FROM unnest(CAST(:partner_ids AS text[]), CAST(:keys AS text[])) AS c(partner_id, key)"
        ),
        {"partner_ids": partner_ids, "keys": keys},
    )
    locked = {(row.partner_id, row.key) for row in locked_rows if row.locked}
    if not locked:
        return locked, {}
    stored_rows = await conn.execute(
        select(idempotency_keys).where(
            tuple_(idempotency_keys.c.partner_id, idempotency_keys.c.key).in_(sorted(locked))
        )
    )
    stored = {
        (row.partner_id, row.key): StoredResponse(row.fingerprint, row.status_code, row.response)
        for row in stored_rows
    }
    return locked, stored


async def save_idempotency(conn: AsyncConnection, records: Sequence[IdempotencyRecord]) -> None:
    if records:
        await conn.execute(
            idempotency_keys.insert(),
            [
                {
                    "partner_id": record.partner_id,
                    "key": record.key,
                    "fingerprint": record.fingerprint,
                    "status_code": record.status_code,
                    "response": record.response,
                    "posting_id": record.posting_id,
                }
                for record in records
            ],
        )


async def liability_by_issuer(conn: AsyncConnection) -> dict[str, tuple[int, Decimal]]:
    """Outstanding points per issuing partner and their value at the issue price each was
    posted at: a sum over a few counter rows per partner, cheap at any moment. (Lots past
    their expiry count until the sweep or the member's next posting expires them.)"""
    rows = await conn.execute(
        select(
            partner_counters.c.partner_id,
            func.sum(partner_counters.c.liability_points),
            func.sum(partner_counters.c.liability_value),
        ).group_by(partner_counters.c.partner_id)
    )
    return {partner_id: (int(points), value) for partner_id, points, value in rows}


async def create_member(
    conn: AsyncConnection, member_id: str, reference: str | None, partner_id: str, now: datetime
) -> None:
    await conn.execute(
        members.insert().values(
            member_id=member_id, reference=reference, enrolled_by=partner_id, created_at=now
        )
    )
    await conn.execute(
        pg_insert(member_links)
        .values(member_id=member_id, partner_id=partner_id)
        .on_conflict_do_nothing()
    )


async def is_linked(conn: AsyncConnection, member_id: str, partner_id: str) -> bool:
    row = await conn.execute(
        select(member_links.c.member_id).where(
            member_links.c.member_id == member_id, member_links.c.partner_id == partner_id
        )
    )
    return row.first() is not None


async def fetch_posting(conn: AsyncConnection, posting_id: uuid.UUID) -> Any | None:
    return (await conn.execute(select(postings).where(postings.c.posting_id == posting_id))).first()


async def fetch_hold(conn: AsyncConnection, hold_id: uuid.UUID) -> Any | None:
    return (await conn.execute(select(holds).where(holds.c.hold_id == hold_id))).first()


async def list_postings(
    conn: AsyncConnection,
    *,
    types: Sequence[str],
    limit: int,
    partner_id: str | None = None,
    member_id: str | None = None,
    reference: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
    posted_after: datetime | None = None,
    posted_before: datetime | None = None,
) -> list[Any]:
    """Postings newest first, keyset-paginated on (posted_at, posting_id); optionally only
    those posted in [posted_after, posted_before)."""
    query = select(postings).where(postings.c.type.in_(list(types)))
    if posted_after is not None:
        query = query.where(postings.c.posted_at >= posted_after)
    if posted_before is not None:
        query = query.where(postings.c.posted_at < posted_before)
    if partner_id is not None:
        query = query.where(postings.c.partner_id == partner_id)
    if member_id is not None:
        query = query.where(postings.c.member_id == member_id)
    if reference is not None:
        query = query.where(postings.c.reference == reference)
    if before is not None:
        query = query.where(tuple_(postings.c.posted_at, postings.c.posting_id) < tuple_(*before))
    query = query.order_by(postings.c.posted_at.desc(), postings.c.posting_id.desc()).limit(limit)
    return list(await conn.execute(query))
