"""The liability roll-forward's movements (contract §8): every lot allocation and lot
creation before the period's end, classified into one named movement (the classification
is drawn in `settlement.rollforward`'s docstring), split at the period's start."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.rollforward import MovementRow

__all__ = ["read_movements"]


# Allocations, classified. An earn reversal's draw on its own lot is covered by `reversed`
# and `reversal_shortfall` below (together: minus what the own lot gave), so it is skipped.
_ALLOCATIONS_SQL = """
SELECT l.issuer_id,
       CASE
         WHEN a.kind = 'repay' THEN 'applied_to_member_debt'
         WHEN p.type = 'burn' AND a.kind = 'draw' THEN 'redeemed'
         WHEN p.type = 'burn_reversal' AND a.kind = 'release' THEN 'redeemed'
         WHEN p.type = 'expiry' AND a.kind = 'draw' THEN 'expired'
         WHEN p.type = 'earn_reversal' AND a.kind = 'draw' THEN 'applied_to_member_debt'
         WHEN p.type = 'adjustment' THEN 'adjusted'
         ELSE p.type
       END AS movement,
       p.posted_at < :start AS before_period,
       sum(CASE WHEN a.kind = 'release' THEN a.points ELSE -a.points END) AS points,
       sum(CASE WHEN a.kind = 'release' THEN a.points ELSE -a.points END * l.unit_price)
           AS value
FROM allocations a
JOIN postings p ON p.posting_id = a.posting_id
JOIN lots l ON l.lot_id = a.lot_id
WHERE p.posted_at < :end
  AND NOT (p.type = 'hold' AND a.kind = 'draw')
  AND NOT (p.type IN ('hold_release', 'burn') AND a.kind = 'release')
  AND NOT (p.type = 'earn_reversal' AND a.kind = 'draw' AND l.earn_id = p.reverses)
GROUP BY 1, 2, 3
UNION ALL
SELECT l.issuer_id, CASE p.type WHEN 'earn' THEN 'issued' ELSE 'adjusted' END,
       p.posted_at < :start, sum(l.initial), sum(l.initial * l.unit_price)
FROM lots l JOIN postings p ON p.posting_id = l.earn_id
WHERE p.posted_at < :end
GROUP BY 1, 2, 3
UNION ALL
SELECT r.partner_id, m.movement, r.posted_at < :start,
       sum(CASE m.movement WHEN 'reversed' THEN -r.points ELSE r.points - coalesce(own.points, 0)
           END),
       sum(CASE m.movement WHEN 'reversed' THEN -r.points ELSE r.points - coalesce(own.points, 0)
           END * r.unit_price)
FROM postings r
CROSS JOIN (VALUES ('reversed'), ('reversal_shortfall')) AS m(movement)
LEFT JOIN LATERAL (
    SELECT sum(a.points) AS points
    FROM allocations a JOIN lots l ON l.lot_id = a.lot_id
    WHERE a.posting_id = r.posting_id AND a.kind = 'draw' AND l.earn_id = r.reverses
) AS own ON true
WHERE r.type = 'earn_reversal' AND r.posted_at < :end
GROUP BY 1, 2, 3"""

_ISSUERS_SQL = """
SELECT partner_id, name, settlement_currency, status, created_at < :end AS existed
FROM partners ORDER BY partner_id"""


async def read_movements(
    conn: AsyncConnection, start: datetime, end: datetime
) -> tuple[list[MovementRow], dict[str, tuple[str, str, bool]]]:
    """Every movement before `end`, split at `start`; and each partner's (name, currency,
    shown-without-movements?). Run it in one REPEATABLE READ snapshot."""
    bounds = {"start": start, "end": end}
    rows = [
        MovementRow(
            row.issuer_id, row.movement, bool(row.before_period), int(row.points), row.value
        )
        for row in await conn.execute(text(_ALLOCATIONS_SQL), bounds)
        if row.points or row.value
    ]
    issuers = {
        row.partner_id: (
            row.name,
            row.settlement_currency,
            bool(row.existed) and row.status != "operator",
        )
        for row in await conn.execute(text(_ISSUERS_SQL), bounds)
    }
    return rows, issuers
