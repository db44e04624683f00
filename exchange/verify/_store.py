"""The consistency checks' SQL: one set-based query per check over the whole ledger, and
the ledger's totals (`exchange verify`, described in `exchange.verify`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["CHECKS", "read_discrepancies", "read_totals"]

CHECKS: dict[str, str] = {
    "posting_balances": """
        SELECT posting_id::text AS subject, '0' AS expected, sum(amount)::text AS actual
        FROM entries GROUP BY posting_id HAVING sum(amount) <> 0""",
    "posting_has_entries": """
        SELECT p.posting_id::text AS subject, 'entries' AS expected, 'none' AS actual
        FROM postings p
        WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE e.posting_id = p.posting_id)""",
    "lot_remaining": """
        SELECT l.lot_id::text AS subject, computed::text AS expected, l.remaining::text AS actual
        FROM lots l
        JOIN (SELECT l2.lot_id, l2.initial + coalesce(sum(
                  CASE a.kind WHEN 'release' THEN a.points ELSE -a.points END), 0) AS computed
              FROM lots l2 LEFT JOIN allocations a ON a.lot_id = l2.lot_id
              GROUP BY l2.lot_id, l2.initial) AS c ON c.lot_id = l.lot_id
        WHERE c.computed <> l.remaining""",
    "member_balance": """
        WITH journal AS (
            SELECT owner AS member_id,
                   sum(amount) FILTER (WHERE account = 'available') AS available,
                   sum(amount) FILTER (WHERE account = 'held') AS held,
                   sum(amount) FILTER (WHERE account = 'pending') AS pending
            FROM entries WHERE account IN ('available', 'held', 'pending') GROUP BY owner),
        lot_sums AS (
            SELECT member_id,
                   sum(remaining) FILTER (WHERE matured) AS matured,
                   sum(remaining) FILTER (WHERE NOT matured) AS unmatured
            FROM lots GROUP BY member_id),
        hold_sums AS (
            SELECT member_id, sum(points) AS held FROM holds WHERE status = 'open'
            GROUP BY member_id),
        sub AS (
            SELECT m.member_id,
                   coalesce(ls.matured, 0) - m.debt AS available,
                   coalesce(hs.held, 0) AS held,
                   coalesce(ls.unmatured, 0) AS pending
            FROM members m
            LEFT JOIN lot_sums ls ON ls.member_id = m.member_id
            LEFT JOIN hold_sums hs ON hs.member_id = m.member_id)
        SELECT s.member_id AS subject,
               format('available=%s held=%s pending=%s', s.available, s.held, s.pending)
                   AS expected,
               format('available=%s held=%s pending=%s', coalesce(j.available, 0),
                      coalesce(j.held, 0), coalesce(j.pending, 0)) AS actual
        FROM sub s LEFT JOIN journal j ON j.member_id = s.member_id
        WHERE s.available <> coalesce(j.available, 0) OR s.held <> coalesce(j.held, 0)
           OR s.pending <> coalesce(j.pending, 0)""",
    "hold_reservation": """
        SELECT h.hold_id::text AS subject, h.points::text AS expected,
               coalesce(sum(a.points), 0)::text AS actual
        FROM holds h
        LEFT JOIN allocations a ON a.posting_id = h.hold_posting_id AND a.kind = 'draw'
        GROUP BY h.hold_id, h.points HAVING coalesce(sum(a.points), 0) <> h.points""",
    "reversal_bound": """
        SELECT o.posting_id::text AS subject, format('<= %s', o.points) AS expected,
               sum(r.points)::text AS actual
        FROM postings o JOIN postings r ON r.reverses = o.posting_id
        GROUP BY o.posting_id, o.points HAVING sum(r.points) > o.points""",
    "conservation": """
        WITH t AS (
            SELECT -coalesce(sum(amount) FILTER (WHERE account = 'issued'), 0) AS issued,
                   coalesce(sum(amount) FILTER (WHERE account = 'redeemed'), 0) AS redeemed,
                   coalesce(sum(amount) FILTER (WHERE account = 'breakage'), 0) AS expired,
                   -coalesce(sum(amount) FILTER (WHERE account = 'adjusted'), 0) AS adjusted,
                   coalesce(sum(amount) FILTER (
                       WHERE account IN ('available', 'held', 'pending')), 0) AS outstanding
            FROM entries)
        SELECT 'issued - redeemed - expired + adjusted' AS subject,
               (issued - redeemed - expired + adjusted)::text AS expected,
               outstanding::text AS actual
        FROM t WHERE issued - redeemed - expired + adjusted <> outstanding""",
    "partner_counters": """
        WITH counted AS (
            SELECT partner_id, sum(liability_points) AS points, sum(liability_value) AS value,
                   sum(issued_value) AS issued
            FROM partner_counters GROUP BY partner_id),
        lot_side AS (
            SELECT issuer_id AS partner_id, sum(remaining) AS points,
                   sum(remaining * unit_price) AS value
            FROM lots GROUP BY issuer_id),
        posting_side AS (
            SELECT partner_id,
                   sum(CASE type WHEN 'earn' THEN points * unit_price
                                 ELSE -points * unit_price END) AS issued
            FROM postings WHERE type IN ('earn', 'earn_reversal') GROUP BY partner_id),
        recomputed AS (
            SELECT coalesce(l.partner_id, p.partner_id) AS partner_id,
                   coalesce(l.points, 0) AS points, coalesce(l.value, 0) AS value,
                   coalesce(p.issued, 0) AS issued
            FROM lot_side l FULL JOIN posting_side p ON p.partner_id = l.partner_id)
        SELECT coalesce(r.partner_id, c.partner_id) AS subject,
               format('points=%s value=%s issued=%s', coalesce(r.points, 0),
                      coalesce(r.value, 0), coalesce(r.issued, 0)) AS expected,
               format('points=%s value=%s issued=%s', coalesce(c.points, 0),
                      coalesce(c.value, 0), coalesce(c.issued, 0)) AS actual
        FROM recomputed r FULL JOIN counted c ON c.partner_id = r.partner_id
        WHERE coalesce(r.points, 0) <> coalesce(c.points, 0)
           OR coalesce(r.value, 0) <> coalesce(c.value, 0)
           OR coalesce(r.issued, 0) <> coalesce(c.issued, 0)""",
    "transfer_pairs": """
        WITH t AS (
            SELECT e.owner, sum(e.amount) AS net,
                   count(*) FILTER (WHERE p.type = 'transfer_out') AS outs,
                   count(*) FILTER (WHERE p.type = 'transfer_in') AS ins,
                   sum(p.points) FILTER (WHERE p.type = 'transfer_out') AS out_points,
                   sum(p.points) FILTER (WHERE p.type = 'transfer_in') AS in_points
            FROM entries e JOIN postings p ON p.posting_id = e.posting_id
            WHERE e.account = 'transfer' GROUP BY e.owner
            UNION ALL
            SELECT p.posting_id::text, 0, 0, 0, NULL, NULL FROM postings p
            WHERE p.type IN ('transfer_out', 'transfer_in') AND NOT EXISTS (
                SELECT 1 FROM entries e
                WHERE e.posting_id = p.posting_id AND e.account = 'transfer'))
        SELECT owner AS subject, 'one transfer_out, one transfer_in, equal points, net 0'
                   AS expected,
               format('out=%s (%s points) in=%s (%s points) net=%s', outs, out_points, ins,
                      in_points, net) AS actual
        FROM t
        WHERE net <> 0 OR outs <> 1 OR ins <> 1 OR out_points IS DISTINCT FROM in_points""",
    "transfer_lots": """
        WITH pairs AS (
            SELECT e.owner,
                   (max(p.posting_id::text) FILTER (WHERE p.type = 'transfer_out'))::uuid AS out_id,
                   (max(p.posting_id::text) FILTER (WHERE p.type = 'transfer_in'))::uuid AS in_id
            FROM entries e JOIN postings p ON p.posting_id = e.posting_id
            WHERE e.account = 'transfer' GROUP BY e.owner),
        drawn AS (
            SELECT pr.owner, a.lot_id, a.points
            FROM pairs pr JOIN allocations a ON a.posting_id = pr.out_id AND a.kind = 'draw'),
        created AS (
            SELECT pr.owner, l.source_lot_id AS lot_id, l.initial AS points, l.issuer_id,
                   l.unit_price, l.expires_at
            FROM pairs pr JOIN lots l ON l.earn_id = pr.in_id AND l.source_lot_id IS NOT NULL)
        SELECT coalesce(d.owner, c.owner) AS subject,
               format('lot %s: %s points, issuer %s, price %s, expiry %s',
                      s.lot_id, d.points, s.issuer_id, s.unit_price, s.expires_at) AS expected,
               format('%s points, issuer %s, price %s, expiry %s',
                      c.points, c.issuer_id, c.unit_price, c.expires_at) AS actual
        FROM drawn d FULL JOIN created c ON c.owner = d.owner AND c.lot_id = d.lot_id
        LEFT JOIN lots s ON s.lot_id = coalesce(d.lot_id, c.lot_id)
        WHERE d.points IS DISTINCT FROM c.points OR s.issuer_id IS DISTINCT FROM c.issuer_id
           OR s.unit_price IS DISTINCT FROM c.unit_price
           OR s.expires_at IS DISTINCT FROM c.expires_at""",
}

_TOTALS = """
    SELECT (SELECT count(*) FROM postings) AS postings,
           (SELECT count(*) FROM members) AS members,
           (SELECT count(*) FROM lots) AS lots,
           (SELECT count(*) FROM postings WHERE type = 'transfer_out') AS transfers,
           -coalesce(sum(amount) FILTER (WHERE account = 'issued'), 0) AS issued,
           coalesce(sum(amount) FILTER (WHERE account = 'redeemed'), 0) AS redeemed,
           coalesce(sum(amount) FILTER (WHERE account = 'breakage'), 0) AS expired,
           -coalesce(sum(amount) FILTER (WHERE account = 'adjusted'), 0) AS adjusted,
           coalesce(sum(amount) FILTER (WHERE account IN ('available', 'held', 'pending')), 0)
               AS outstanding
    FROM entries"""


async def read_discrepancies(
    conn: AsyncConnection, check: str, *, limit: int
) -> list[tuple[str, str, str]]:
    """The first `limit` (subject, expected, actual) that `check` finds wrong."""
    rows = await conn.execute(text(CHECKS[check] + f" LIMIT {int(limit)}"))
    return [(str(row.subject), str(row.expected), str(row.actual)) for row in rows]


async def read_totals(conn: AsyncConnection) -> dict[str, int]:
    totals: dict[str, Any] = dict((await conn.execute(text(_TOTALS))).mappings().one())
    return {key: int(value) for key, value in totals.items()}
