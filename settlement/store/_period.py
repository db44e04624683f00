"""Measuring a period of the journal (`read_period`): set-based SQL whose sums the pure
`settlement.engine` settles into lines, flows and control totals."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from settlement.engine import (
    CrossBrandFlow,
    JournalAccounts,
    PartnerActivity,
    Period,
    PeriodFigures,
)

__all__ = ["MEASURING_QUERIES", "SETTLEMENT_WORK_MEM_MB", "read_period"]

SETTLEMENT_WORK_MEM_MB = 64

# Every partner that existed before the period ended gets a line (zeros included, so a
# finance team sees the whole coalition); a partner with postings always does.
_ACTIVITY_SQL = """
WITH activity AS (
    SELECT partner_id,
           coalesce(sum(points) FILTER (WHERE type = 'earn'), 0) AS earned,
           coalesce(sum(points) FILTER (WHERE type = 'earn_reversal'), 0) AS earn_reversed,
           coalesce(sum(points) FILTER (WHERE type = 'burn'), 0) AS burned,
           coalesce(sum(points) FILTER (WHERE type = 'burn_reversal'), 0) AS burn_reversed,
           coalesce(sum(points) FILTER (WHERE type = 'expiry'), 0) AS expired,
           coalesce(sum(points * unit_price) FILTER (WHERE type = 'earn'), 0)
             - coalesce(sum(points * unit_price) FILTER (WHERE type = 'earn_reversal'), 0)
               AS issuance_exact,
           coalesce(sum(points * unit_price) FILTER (WHERE type = 'burn'), 0)
             - coalesce(sum(points * unit_price) FILTER (WHERE type = 'burn_reversal'), 0)
               AS redemption_exact,
           coalesce(sum(points * unit_price) FILTER (WHERE type = 'expiry'), 0)
               AS expired_value_exact,
           min(currency) FILTER (WHERE type <> 'expiry') AS currency_min,
           max(currency) FILTER (WHERE type <> 'expiry') AS currency_max
    FROM postings
    WHERE posted_at >= :start AND posted_at < :end
      AND type IN ('earn', 'earn_reversal', 'burn', 'burn_reversal', 'expiry')
    GROUP BY partner_id)
SELECT p.partner_id, p.name, p.settlement_currency,
       coalesce(a.earned, 0) AS earned, coalesce(a.earn_reversed, 0) AS earn_reversed,
       coalesce(a.burned, 0) AS burned, coalesce(a.burn_reversed, 0) AS burn_reversed,
       coalesce(a.expired, 0) AS expired,
       coalesce(a.issuance_exact, 0) AS issuance_exact,
       coalesce(a.redemption_exact, 0) AS redemption_exact,
       coalesce(a.expired_value_exact, 0) AS expired_value_exact,
       a.currency_min, a.currency_max,
       coalesce(p.terminated_at >= :start AND p.terminated_at < :end, false) AS final
FROM partners p LEFT JOIN activity a ON a.partner_id = p.partner_id
WHERE (p.created_at < :end AND p.status <> 'operator') OR a.partner_id IS NOT NULL
ORDER BY p.partner_id"""

_ACCOUNTS_SQL = """
SELECT owner,
       -coalesce(sum(amount) FILTER (WHERE account = 'issued'), 0) AS issued,
       coalesce(sum(amount) FILTER (WHERE account = 'redeemed'), 0) AS redeemed,
       coalesce(sum(amount) FILTER (WHERE account = 'breakage'), 0) AS expired
FROM entries
WHERE posted_at >= :start AND posted_at < :end
  AND account IN ('issued', 'redeemed', 'breakage')
GROUP BY owner"""

# Burns draw points from lots (the lot knows its issuer); a burn reversal releases them
# back to the same lots. Captured holds are burns too; their `release` allocations undo
# the hold's reservation and are not redemptions, so only `draw` counts for burns.
_CROSS_BRAND_SQL = """
SELECT l.issuer_id, p.partner_id AS redeemer_id,
       sum(CASE WHEN p.type = 'burn' THEN a.points ELSE -a.points END) AS points
FROM postings p
JOIN allocations a ON a.posting_id = p.posting_id
JOIN lots l ON l.lot_id = a.lot_id
WHERE p.posted_at >= :start AND p.posted_at < :end
  AND ((p.type = 'burn' AND a.kind = 'draw') OR (p.type = 'burn_reversal' AND a.kind = 'release'))
GROUP BY l.issuer_id, p.partner_id
HAVING sum(CASE WHEN p.type = 'burn' THEN a.points ELSE -a.points END) <> 0
ORDER BY l.issuer_id, p.partner_id"""

# Outstanding at T = every member account entry stamped before T (negative balances
# included), read from the journal itself in one pass for both ends of the period.
# Adjustments: minus the `adjusted` accounts' movement in the period (what members got).
_OUTSTANDING_SQL = """
SELECT coalesce(sum(amount) FILTER (
           WHERE posted_at < :start AND account <> 'adjusted'), 0) AS outstanding_start,
       coalesce(sum(amount) FILTER (WHERE account <> 'adjusted'), 0) AS outstanding_end,
       -coalesce(sum(amount) FILTER (
           WHERE posted_at >= :start AND account = 'adjusted'), 0) AS adjusted
FROM entries
WHERE account IN ('available', 'held', 'pending', 'adjusted') AND posted_at < :end"""


# The period's measuring queries by name, for `exchange bench settlement --explain`.
MEASURING_QUERIES = {
    "activity": _ACTIVITY_SQL,
    "accounts": _ACCOUNTS_SQL,
    "cross_brand": _CROSS_BRAND_SQL,
    "outstanding": _OUTSTANDING_SQL,
}


async def read_period(conn: AsyncConnection, period: Period) -> PeriodFigures:
    """Measure the period. Run it in one REPEATABLE READ snapshot after the journal has
    been closed until `period.end`, so the figures are final and mutually consistent."""
    bounds = {"start": period.start, "end": period.end}
    # A batch job joining hundreds of thousands of rows: let its hashes stay in memory
    # (PostgreSQL's 4 MB default spills them to disk). Only for this database transaction.
    await conn.execute(text(f"SET LOCAL work_mem = '{SETTLEMENT_WORK_MEM_MB}MB'"))
    activity = tuple(
        PartnerActivity(
            partner_id=row.partner_id,
            partner_name=row.name,
            currency=row.settlement_currency,
            earned_points=int(row.earned),
            earn_reversed_points=int(row.earn_reversed),
            burned_points=int(row.burned),
            burn_reversed_points=int(row.burn_reversed),
            expired_points=int(row.expired),
            issuance_exact=Decimal(row.issuance_exact),
            redemption_exact=Decimal(row.redemption_exact),
            expired_value_exact=Decimal(row.expired_value_exact),
            final=bool(row.final),
            foreign_postings=sum(
                1
                for code in {row.currency_min, row.currency_max}
                if code is not None and code != row.settlement_currency
            ),
        )
        for row in await conn.execute(text(_ACTIVITY_SQL), bounds)
    )
    accounts = {
        row.owner: JournalAccounts(int(row.issued), int(row.redeemed), int(row.expired))
        for row in await conn.execute(text(_ACCOUNTS_SQL), bounds)
    }
    flows = tuple(
        CrossBrandFlow(row.issuer_id, row.redeemer_id, int(row.points))
        for row in await conn.execute(text(_CROSS_BRAND_SQL), bounds)
    )
    outstanding = (await conn.execute(text(_OUTSTANDING_SQL), bounds)).one()
    return PeriodFigures(
        period=period,
        activity=activity,
        accounts=accounts,
        cross_brand=flows,
        outstanding_start=int(outstanding.outstanding_start),
        outstanding_end=int(outstanding.outstanding_end),
        adjusted=int(outstanding.adjusted),
    )
