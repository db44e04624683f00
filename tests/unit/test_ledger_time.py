"""Time-driven changes applied on read (`apply_due`): pending points mature, holds and
lots expire, each stamped when it fell due, in order, never inside a closed period.
Pure: no database, each rule run on a book written as a table."""

from __future__ import annotations

from datetime import timedelta

from exchange.ledger import EXPIRING_LOTS_SHOWN_MAX, AllocationKind, ExpiringPoints, PostingType
from tests.unit.books import NOW, Ledger

DAY = timedelta(days=1)


def test_due_changes_are_posted_in_order_each_stamped_when_it_fell_due() -> None:
    ledger = Ledger(
        """
        lot  issuer  points  remaining  available  expires
        old  grocer  40      25         -          now-3d
        new  fuel    60      60         now-2d     now+9d
        """
    )
    posted = ledger.settle()
    assert [(p.type, p.points, p.posted_at, p.partner_id) for p in posted] == [
        (PostingType.EXPIRY, 25, NOW - 3 * DAY, "grocer"),
        (PostingType.MATURATION, 60, NOW - 2 * DAY, "fuel"),
    ]
    assert ledger.settle() == []  # nothing more is due: reading twice changes nothing
    balance = ledger.balance()
    assert (balance.available, balance.pending) == (60, 0)


def test_nothing_is_stamped_inside_a_closed_period() -> None:
    ledger = Ledger("lot issuer points expires\nold grocer 40 now-3d", closed_until=NOW - DAY)
    [expiry] = ledger.settle()
    assert (expiry.type, expiry.posted_at) == (PostingType.EXPIRY, NOW - DAY)


def test_a_balance_read_later_applies_what_fell_due_in_between() -> None:
    """Valid becoming invalid, seen from a read: the points are there until their date."""
    ledger = Ledger("lot issuer points created expires\na grocer 40 now-1d now+7d")
    assert ledger.balance().available == 40
    ledger.now += 7 * DAY - timedelta(seconds=1)
    assert ledger.balance().available == 40
    ledger.now += timedelta(seconds=1)
    assert ledger.balance().available == 0
    assert ledger.posted() == [(PostingType.EXPIRY, 40)]


def test_points_freed_at_one_instant_repay_the_debt_once() -> None:
    """A lot maturing and a hold expiring at the same instant: both free points, and the
    debt is repaid once, soonest-expiring first, on the instant's last posting."""
    ledger = Ledger(
        """
        lot  issuer  points  remaining  created  available  expires
        a    grocer  30      0          now-2d   -          now+5d
        p    fuel    50      50         now-2d   now+1h     now+30d
        """,
        """
        hold  partner  points  created  expires  draws
        h     cinema   30      now-1h   now+1h   a:30
        """,
        debt=45,
    )
    ledger.now += timedelta(hours=2)
    posted = ledger.settle()
    assert [(p.type, p.points) for p in posted] == [
        (PostingType.MATURATION, 50),
        (PostingType.HOLD_RELEASE, 30),
    ]
    assert ledger.lot_names(posted[0], AllocationKind.REPAY) == []
    assert ledger.lot_names(posted[1], AllocationKind.REPAY) == [("a", 30), ("p", 15)]
    assert (ledger.book.debt, ledger.remaining()) == (0, {"a": 0, "p": 35})
    assert ledger.balance().available == 35


def test_the_balance_shows_the_soonest_expiring_points_grouped_by_date() -> None:
    rows = "\n".join(f"l{i} grocer 10 now+{i}d" for i in range(1, 8))
    ledger = Ledger(
        "lot issuer points expires\n" + rows + "\ntwin fuel 5 now+1d\nempty fuel 0 now+1h"
    )
    balance = ledger.balance()
    assert balance.available == 75
    assert len(balance.expiring) == EXPIRING_LOTS_SHOWN_MAX
    assert balance.expiring[:2] == (
        ExpiringPoints(15, NOW + DAY),
        ExpiringPoints(10, NOW + 2 * DAY),
    )
    assert balance.expiring[-1].expires_at == NOW + 5 * DAY
