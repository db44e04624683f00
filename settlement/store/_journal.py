"""The two figures of a period the run lines do not carry, for the run's journal
(`settlement.journal`): the redeemed points' issue value per redeemer, the expired value
per issuer."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.engine import Period
from settlement.journal import JournalFigures

__all__ = ["read_journal_figures"]

# Burns draw from lots (each at its issue price); burn reversals release points back to
# the same lots. A lot from an issuer settling in another currency is valued at the
# burn's own price (its redemption value), so no FX enters the books.
_REDEEMED_SQL = """
SELECT p.partner_id AS redeemer_id,
       sum(CASE WHEN p.type = 'burn' THEN a.points ELSE -a.points END
           * CASE WHEN issuer.settlement_currency = p.currency THEN l.unit_price
                  ELSE p.unit_price END) AS value
FROM postings p
JOIN allocations a ON a.posting_id = p.posting_id
JOIN lots l ON l.lot_id = a.lot_id
JOIN partners issuer ON issuer.partner_id = l.issuer_id
WHERE p.posted_at >= :start AND p.posted_at < :end
  AND ((p.type = 'burn' AND a.kind = 'draw') OR (p.type = 'burn_reversal' AND a.kind = 'release'))
GROUP BY p.partner_id"""

_EXPIRED_SQL = """
SELECT partner_id, sum(points * unit_price) AS value
FROM postings
WHERE posted_at >= :start AND posted_at < :end AND type = 'expiry'
GROUP BY partner_id"""


async def read_journal_figures(conn: AsyncConnection, period: Period) -> JournalFigures:
    bounds = {"start": period.start, "end": period.end}
    redeemed = {
        row.redeemer_id: Decimal(row.value)
        for row in await conn.execute(text(_REDEEMED_SQL), bounds)
    }
    expired = {
        row.partner_id: Decimal(row.value) for row in await conn.execute(text(_EXPIRED_SQL), bounds)
    }
    return JournalFigures(redeemed, expired)
