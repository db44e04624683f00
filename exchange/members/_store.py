"""Members SQL off the posting path (SQLAlchemy Core): export, erasure, and the expiry
reminders' INSERT ... SELECT into the webhook outbox (`exchange.members.reminders`).

Erasure and the journal's append-only guard: a partner's `reference` on a posting, and
the partner's idempotency key with the response stored under it, are partner data about
the member, so erasure must scrub them, while the journal refuses every UPDATE.
Migrations 0007 and 0014 narrow the guard to one exception: inside a database
transaction that has set `exchange.erasing_member` to the posting's member, an UPDATE
that sets those to NULL and changes nothing else is allowed. Amounts, types, times and
prices can never change, so every settlement figure stays what it was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.ids import format_hold_id, format_transaction_id
from exchange.members.tables import member_idempotency_keys, webhook_outbox
from exchange.tables import (
    KEY_COLUMNS,
    REQUEST_COLUMNS,
    adjustments,
    holds,
    idempotency_records,
    lots,
    member_links,
    members,
    postings,
)
from partners.tables import member_sessions

__all__ = [
    "EXPORT_SECTIONS",
    "erase_member",
    "export_sections",
    "insert_expiry_reminders",
    "member_status",
]

# Which export section holds the rows of each table with a member_id column. A table
# missing here is a table the export does not cover (tests/http/test_members_api.py
# compares this with information_schema).
EXPORT_SECTIONS = {
    "members": "member",
    "member_links": "links",
    "postings": "history",
    "lots": "lots",
    "holds": "holds",
    "member_sessions": "sessions",
    "member_idempotency_keys": "requests",
    "adjustments": "adjustments",
}


def _plain(row: Any, *, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {key: value for key, value in row._mapping.items() if key not in drop}


async def _rows(conn: AsyncConnection, query: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return [_plain(row, **kwargs) for row in await conn.execute(query)]


def _posting(row: dict[str, Any]) -> dict[str, Any]:
    row["transaction_id"] = format_transaction_id(row.pop("posting_id"))
    if row.get("reverses") is not None:
        row["reverses"] = format_transaction_id(row["reverses"])
    if row.get("hold_id") is not None:
        row["hold_id"] = format_hold_id(row["hold_id"])
    return row


def _references(
    member: dict[str, Any], history: list[dict[str, Any]], held: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    found = []
    if member.get("reference") is not None:
        found.append({"partner_id": member["enrolled_by"], "reference": member["reference"],
                      "on": "enrolment"})  # fmt: skip
    for kind, rows, id_field in (("transaction", history, "transaction_id"),
                                 ("hold", held, "hold_id")):  # fmt: skip
        found.extend(
            {
                "partner_id": row["partner_id"],
                "reference": row["reference"],
                "on": kind,
                "id": row[id_field],
            }
            for row in rows
            if row.get("reference") is not None
        )
    return found


async def export_sections(conn: AsyncConnection, member_id: str) -> dict[str, Any] | None:
    """Every row about the member, by section (see EXPORT_SECTIONS); None if unknown or
    erased. Token hashes, stored response bytes and the partners' requests on postings
    (keys, responses, signatures) are left out: secrets, or copies of what the export
    already shows."""
    member_rows = await _rows(
        conn, select(members).where(members.c.member_id == member_id, members.c.status == "active")
    )
    if not member_rows:
        return None
    member = member_rows[0]
    order = (postings.c.posted_at, postings.c.posting_id)
    history = [
        _posting(row)
        for row in await _rows(
            conn,
            select(postings).where(postings.c.member_id == member_id).order_by(*order),
            drop=REQUEST_COLUMNS,
        )
    ]
    held = await _rows(
        conn, select(holds).where(holds.c.member_id == member_id).order_by(holds.c.created_at)
    )
    for row in held:
        row["hold_id"] = format_hold_id(row["hold_id"])
    return {
        "member": member,
        "links": await _rows(
            conn, select(member_links).where(member_links.c.member_id == member_id)
        ),
        "references": _references(member, history, held),
        "history": history,
        "lots": await _rows(
            conn, select(lots).where(lots.c.member_id == member_id).order_by(lots.c.created_at)
        ),
        "holds": held,
        "sessions": await _rows(
            conn,
            select(member_sessions).where(member_sessions.c.member_id == member_id),
            drop=("token_hash",),
        ),
        "requests": await _rows(
            conn,
            select(member_idempotency_keys).where(member_idempotency_keys.c.member_id == member_id),
            drop=("fingerprint", "response"),
        ),
        # Operators' corrections to the member's points (contract §8), with their reasons.
        "adjustments": await _rows(
            conn,
            select(adjustments)
            .where(adjustments.c.member_id == member_id)
            .order_by(adjustments.c.requested_at),
        ),
    }


async def member_status(conn: AsyncConnection, member_id: str) -> str | None:
    return (
        await conn.execute(select(members.c.status).where(members.c.member_id == member_id))
    ).scalar_one_or_none()


async def erase_member(conn: AsyncConnection, member_id: str, now: datetime) -> bool:
    """Erase one member in the caller's database transaction; False if unknown or erased.

    The member row is locked first (FOR UPDATE waits for postings in flight for it; later
    ones find it erased). Kept: the member row (status `erased`), postings, entries, lots,
    allocations and holds, with their amounts, and the signature evidence of postings.
    Scrubbed: every reference, and the partners' keys and responses on the member's
    postings. Deleted: links, sessions, the member's idempotency records and the partners'
    other records about it (a retry now gets 404, never a replay), and its undelivered
    reminders."""
    status = (
        await conn.execute(
            select(members.c.status).where(members.c.member_id == member_id).with_for_update()
        )
    ).scalar_one_or_none()
    if status != "active":
        return False
    await conn.execute(
        text("SELECT set_config('exchange.erasing_member', :member_id, true)"),
        {"member_id": member_id},
    )
    mine = select(postings.c.posting_id).where(postings.c.member_id == member_id)
    await conn.execute(
        update(postings)
        .where(
            postings.c.member_id == member_id,
            or_(postings.c.reference.is_not(None), postings.c.idempotency_key.is_not(None)),
        )
        .values(dict.fromkeys(("reference", *KEY_COLUMNS)))
    )
    await conn.execute(
        update(holds)
        .where(holds.c.member_id == member_id, holds.c.reference.is_not(None))
        .values(reference=None)
    )
    await conn.execute(
        update(members)
        .where(members.c.member_id == member_id)
        .values(reference=None, status="erased", erased_at=now)
    )
    for table in (member_links, member_sessions, member_idempotency_keys):
        await conn.execute(delete(table).where(table.c.member_id == member_id))
    # Enrolment and session responses name the member without a posting: found by content
    # (a scan, acceptable for a rare operator action).
    await conn.execute(
        delete(idempotency_records).where(
            or_(
                idempotency_records.c.posting_id.in_(mine),
                text(
                    "position(convert_to(:member_id, 'UTF8') in idempotency_records.response) > 0"
                ).bindparams(member_id=member_id),
            )
        )
    )
    await conn.execute(
        delete(webhook_outbox).where(webhook_outbox.c.data["member_id"].astext == member_id)
    )
    return True


# The lots come from the partial index ix_lots_expires_at_open (remaining > 0, by
# expiry): the sweep reads only lots expiring inside the widest window.
_REMINDERS_SQL = text(
    """
INSERT INTO webhook_outbox (event_id, partner_id, type, created_at, data, dedupe_key)
SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), k.partner_id, CAST(:event_type AS text),
       CAST(:now AS timestamptz),
       jsonb_build_object(
           'member_id', l.member_id,
           'lot_id', 'lot_' || replace(l.lot_id::text, '-', ''),
           'issuer', l.issuer_id,
           'points', l.remaining,
           'expires_at', to_char(l.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'days', CAST(:days AS integer)),
       CAST(:event_type AS text) || ':' || l.lot_id::text || ':' || CAST(:days AS integer)
           || ':' || k.partner_id
FROM lots AS l
JOIN members AS m ON m.member_id = l.member_id AND m.status = 'active'
JOIN member_links AS k ON k.member_id = l.member_id
WHERE l.remaining > 0 AND l.expires_at > CAST(:now AS timestamptz)
  AND l.expires_at <= CAST(:until AS timestamptz)
ORDER BY l.expires_at, l.lot_id, k.partner_id
ON CONFLICT (dedupe_key) DO NOTHING
"""
)


async def insert_expiry_reminders(
    conn: AsyncConnection, event_type: str, *, now: datetime, until: datetime, days: int
) -> int:
    """One event per lot with points left expiring in `(now, until]` and partner the
    member is linked to, unless it exists already; returns how many were new."""
    result = await conn.execute(
        _REMINDERS_SQL, {"event_type": event_type, "now": now, "until": until, "days": days}
    )
    return result.rowcount or 0
