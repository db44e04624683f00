"""The run's double-entry journal in the operator's chart of accounts (contract §8).

The points liability is carried at issue price throughout: issuance credits it with
what the partner is charged, redemption and expiry debit it with the issue price of the
points that leave it. Per partner line, in the partner's settlement currency:

    issuance     Dr receivable:partner   issuance charge
                 Cr points liability    issuance charge
    redemption   Dr points liability    issue-price value of the points redeemed with it
                 Cr payable:partner     redemption credit
                 Cr redemption margin   the difference
    netting      Dr payable:partner     the smaller of charge and credit
                 Cr receivable:partner  the same (what is left is the document's side)
    rounding     Dr receivable/payable  net - (charge - credit), when rounding each of the
                 Cr rounding            three amounts once makes them differ by a cent
    breakage     Dr points liability    issue-price value of its points that expired
                 Cr breakage revenue    the same

Every entry balances on its own, so the run balances per currency exactly (each amount is
rounded once, half-even, before it is split; the margin is the difference of two rounded
amounts). A negative amount (more reversed than posted) swaps the entry's sides. Points
a member redeemed in another currency than their issuer's are valued at the redemption
credit (no margin): the exchange books no FX.

`build_journal` is pure; `settlement.store.read_journal_figures` reads the two figures the
run lines do not carry (the redeemed points' issue value per redeemer, the expired value
per issuer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from exchange.money import round_money
from settlement.engine import Line

__all__ = [
    "ChartOfAccounts",
    "JournalEntry",
    "JournalFigures",
    "JournalLine",
    "build_journal",
    "totals",
]

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class ChartOfAccounts:
    receivable: str = "1200"
    payable: str = "2100"
    points_liability: str = "2400"
    redemption_margin: str = "4100"
    breakage_revenue: str = "4200"
    rounding: str = "6990"


@dataclass(frozen=True, slots=True)
class JournalLine:
    account: str
    account_name: str
    partner_id: str | None  # the sub-ledger of receivable/payable
    debit: Decimal
    credit: Decimal


@dataclass(frozen=True, slots=True)
class JournalEntry:
    entry: int
    kind: str  # issuance | redemption | netting | rounding | breakage
    partner_id: str
    currency: str
    description: str
    lines: tuple[JournalLine, ...]


@dataclass(frozen=True, slots=True)
class JournalFigures:
    """Exact sums the run lines do not carry, per partner."""

    redeemed_issue_value: dict[str, Decimal]  # by redeemer
    expired_value: dict[str, Decimal]  # by issuer


def _line(account: str, name: str, partner_id: str | None, amount: Decimal) -> JournalLine:
    """A debit for a positive amount, a credit for a negative one."""
    return JournalLine(account, name, partner_id, max(amount, ZERO), max(-amount, ZERO))


def _entries_for(
    line: Line, figures: JournalFigures, chart: ChartOfAccounts
) -> list[tuple[str, str, list[JournalLine]]]:
    p, c = line.partner_id, line.currency
    ar = ("receivable", chart.receivable, p)
    ap = ("payable", chart.payable, p)
    liability = ("points liability", chart.points_liability, None)

    def leg(account: tuple[str, str, str | None], amount: Decimal) -> JournalLine:
        return _line(account[1], account[0], account[2], amount)

    relief = round_money(figures.redeemed_issue_value.get(p, ZERO), c)
    expired = round_money(figures.expired_value.get(p, ZERO), c)
    charge, credit = line.issuance_charge, line.redemption_credit
    netted = min(charge, credit) if charge > 0 and credit > 0 else ZERO
    rounding = line.net - (charge - credit)
    side = ar if charge >= credit else ap
    margin = ("redemption margin", chart.redemption_margin, None)
    return [
        ("issuance", f"Points issued by {p}", [leg(ar, charge), leg(liability, -charge)]),
        (
            "redemption",
            f"Points redeemed with {p}",
            [leg(liability, relief), leg(ap, -credit), leg(margin, credit - relief)],
        ),
        (
            "netting",
            f"Net {p}'s payable against its receivable",
            [leg(ap, netted), leg(ar, -netted)],
        ),
        (
            "rounding",
            f"Rounding of {p}'s net to the minor unit",
            [leg(side, rounding), leg(("rounding", chart.rounding, None), -rounding)],
        ),
        (
            "breakage",
            f"Points issued by {p} that expired",
            [
                leg(liability, expired),
                leg(("breakage revenue", chart.breakage_revenue, None), -expired),
            ],
        ),
    ]


def build_journal(
    lines: Iterable[Line], figures: JournalFigures, chart: ChartOfAccounts
) -> list[JournalEntry]:
    """The run's entries, partner by partner; entries whose legs are all zero are left out."""
    entries: list[JournalEntry] = []
    for line in sorted(lines, key=lambda item: item.partner_id):
        for kind, description, legs in _entries_for(line, figures, chart):
            kept = tuple(leg for leg in legs if leg.debit or leg.credit)
            if not kept:
                continue
            entries.append(
                JournalEntry(
                    len(entries) + 1, kind, line.partner_id, line.currency, description, kept
                )
            )
    return entries


def totals(entries: Iterable[JournalEntry]) -> dict[str, tuple[Decimal, Decimal]]:
    """Σ debits and Σ credits per currency (equal in a balanced journal)."""
    sums: dict[str, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for entry in entries:
        for leg in entry.lines:
            sums[entry.currency][0] += leg.debit
            sums[entry.currency][1] += leg.credit
    return {currency: (debit, credit) for currency, (debit, credit) in sorted(sums.items())}
