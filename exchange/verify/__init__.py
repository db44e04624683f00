"""`exchange verify`: recompute the ledger from the journal and compare.

Every check is one set-based query over the whole ledger, so it scales with the
database, not with Python. A clean ledger yields no discrepancies; each discrepancy
names the check, the ids involved, and the expected and actual figures.

Checks:
- every posting's entries sum to zero, and every posting has entries;
- every lot's remaining = initial - draws - repayments + releases (from allocations);
- every member's journal balances (available, held, pending) equal their sub-ledger:
  available = matured lots' remaining - debt; pending = unmatured lots' remaining;
  held = points of open holds; and every open hold's points equal what it drew;
- reversals never exceed their originals;
- issued - redeemed - expired + adjusted = outstanding (the sum of all member accounts;
  `adjusted` is what operator adjustments gave members, net of what they took back);
- the partner counters (liability points and value, issuance value) match the lots and
  postings they summarise;
- every transfer is one transfer_out and one transfer_in of the same points whose
  clearing entries net to zero, and its lots are conserved: each lot the transfer_out
  drew from became a lot of the recipient with exactly those points and the same issuer,
  price and expiry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.verify._store import CHECKS, read_discrepancies, read_totals

__all__ = ["SHOWN_PER_CHECK_MAX", "Discrepancy", "VerifyReport", "verify_ledger"]

SHOWN_PER_CHECK_MAX = 50


@dataclass(frozen=True, slots=True)
class Discrepancy:
    check: str
    subject: str
    expected: str
    actual: str


@dataclass
class VerifyReport:
    discrepancies: list[Discrepancy] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.discrepancies


async def verify_ledger(engine: AsyncEngine) -> VerifyReport:
    """Run every check in one REPEATABLE READ snapshot, so postings committing meanwhile
    cannot make a consistent ledger look inconsistent."""
    report = VerifyReport()
    async with engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            for check in CHECKS:
                found = await read_discrepancies(conn, check, limit=SHOWN_PER_CHECK_MAX)
                report.discrepancies.extend(Discrepancy(check, *row) for row in found)
            report.totals = await read_totals(conn)
    return report
