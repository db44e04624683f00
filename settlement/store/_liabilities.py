"""The issuers' outstanding points now, aged by expiry, and what separates them from the
members' accounts (the liability report, contract §6)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "AGEING_LIMITS_DAYS",
    "LiabilityReconciliation",
    "LiabilityRow",
    "liabilities",
    "liability_reconciliation",
]

AGEING_LIMITS_DAYS = (30, 90, 365)


@dataclass(frozen=True, slots=True)
class LiabilityRow:
    partner_id: str
    partner_name: str
    currency: str
    held_points: int
    buckets: tuple[tuple[int, Decimal], ...]  # (points, exact value) per ageing bucket


# Points still in members' hands, by the lot they came from: what lots hold, plus what
# open holds have reserved from them (a hold can still be voided). Lots past expiry are
# breakage-to-be, not liability, whether or not the sweep has posted it yet.
_LIABILITIES_SQL = """
WITH outstanding AS (
    SELECT issuer_id, expires_at, unit_price, remaining AS points, 0 AS held
    FROM lots WHERE remaining > 0 AND expires_at > :now
    UNION ALL
    SELECT l.issuer_id, l.expires_at, l.unit_price, a.points, a.points AS held
    FROM holds h
    JOIN allocations a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
    JOIN lots l ON l.lot_id = a.lot_id
    WHERE h.status = 'open' AND l.expires_at > :now),
bucketed AS (
    SELECT issuer_id, points, held, points * unit_price AS value,
           CASE WHEN expires_at <= :d1 THEN 0 WHEN expires_at <= :d2 THEN 1
                WHEN expires_at <= :d3 THEN 2 ELSE 3 END AS bucket
    FROM outstanding)
SELECT p.partner_id, p.name, p.settlement_currency,
       coalesce(sum(b.held), 0) AS held,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 0), 0) AS p0,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 0), 0) AS v0,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 1), 0) AS p1,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 1), 0) AS v1,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 2), 0) AS p2,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 2), 0) AS v2,
       coalesce(sum(b.points) FILTER (WHERE b.bucket = 3), 0) AS p3,
       coalesce(sum(b.value) FILTER (WHERE b.bucket = 3), 0) AS v3
FROM partners p LEFT JOIN bucketed b ON b.issuer_id = p.partner_id
GROUP BY p.partner_id, p.name, p.settlement_currency, p.status
-- The operator's goodwill row shows only once it has issued points that are outstanding.
HAVING p.status <> 'operator' OR count(b.issuer_id) > 0
ORDER BY p.partner_id"""


async def liabilities(conn: AsyncConnection, now: datetime) -> list[LiabilityRow]:
    limits = {
        f"d{index}": now + timedelta(days=days)
        for index, days in enumerate(AGEING_LIMITS_DAYS, start=1)
    }
    rows = await conn.execute(text(_LIABILITIES_SQL), {"now": now, **limits})
    return [
        LiabilityRow(
            partner_id=row.partner_id,
            partner_name=row.name,
            currency=row.settlement_currency,
            held_points=int(row.held),
            buckets=tuple(
                (int(getattr(row, f"p{index}")), Decimal(getattr(row, f"v{index}")))
                for index in range(4)
            ),
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class LiabilityReconciliation:
    """What separates the issuers' outstanding points from the members' accounts now:
    points past expiry that the sweep has not posted yet (still in members' accounts),
    points open holds reserve from lots already past expiry (they expire when the hold is
    released, unless captured first), and members' negative balances (owed by members,
    netted against no issuer)."""

    expired_not_yet_swept: int
    held_on_expired_lots: int
    member_debt: int
    member_accounts: int  # available + held + pending over all members, from the journal


_RECONCILIATION_SQL = """
SELECT (SELECT coalesce(sum(remaining), 0) FROM lots
        WHERE remaining > 0 AND expires_at <= :now) AS unswept,
       (SELECT coalesce(sum(a.points), 0) FROM holds h
        JOIN allocations a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
        JOIN lots l ON l.lot_id = a.lot_id
        WHERE h.status = 'open' AND l.expires_at <= :now) AS held_expired,
       (SELECT coalesce(sum(debt), 0) FROM members) AS debt,
       (SELECT coalesce(sum(amount), 0) FROM entries
        WHERE account IN ('available', 'held', 'pending')) AS accounts"""


async def liability_reconciliation(conn: AsyncConnection, now: datetime) -> LiabilityReconciliation:
    row = (await conn.execute(text(_RECONCILIATION_SQL), {"now": now})).one()
    return LiabilityReconciliation(
        int(row.unswept), int(row.held_expired), int(row.debt), int(row.accounts)
    )
