"""Pure member rules: tiers from qualifying points, their configuration, and the
transfer rule on in-memory books (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from exchange.config import ConfigError, Settings
from exchange.errors import InsufficientPoints, TransferLimitExceeded, Unprocessable
from exchange.ids import new_id
from exchange.ledger import (
    Account,
    Context,
    Lot,
    MemberBook,
    PostingType,
    TransferLimits,
    transfer,
)
from exchange.members import TierStatus, tier_status

TIERS = (("base", 0), ("silver", 5000), ("gold", 20000))
NOW = datetime(2026, 11, 23, 10, tzinfo=UTC)
LIMITS = TransferLimits(points_per_transfer_max=1000, points_per_30d_max=1500)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (0, TierStatus("base", 0, "silver", 5000)),
        (4999, TierStatus("base", 4999, "silver", 1)),
        (5000, TierStatus("silver", 5000, "gold", 15000)),
        (20000, TierStatus("gold", 20000)),
        (10**9, TierStatus("gold", 10**9)),
    ],
)
def test_the_tier_is_the_highest_threshold_reached(points: int, expected: TierStatus) -> None:
    assert tier_status(points, TIERS) == expected


def test_tiers_and_reminder_days_are_validated_at_start_up() -> None:
    settings = Settings.from_env(
        {"EXCHANGE_TIERS": "blue:0,red:10", "EXCHANGE_EXPIRY_REMINDER_DAYS": "7,30,7"}
    )
    assert settings.tiers == (("blue", 0), ("red", 10))
    assert settings.expiry_reminder_days == (30, 7)
    for bad in ("silver:5000", "base:0,gold:10,silver:5", "base:0,base:5", "base:x"):
        with pytest.raises(ConfigError, match="EXCHANGE_TIERS"):
            Settings.from_env({"EXCHANGE_TIERS": bad})
    with pytest.raises(ConfigError, match="EXCHANGE_TRANSFER_MAX_POINTS"):
        Settings.from_env({"EXCHANGE_TRANSFER_MAX_POINTS": "0"})


def _book(member_id: str, *lots: tuple[str, int, int]) -> MemberBook:
    """A book with matured lots of (issuer, points, days to expiry)."""
    book = MemberBook(member_id=member_id, debt=0)
    for issuer, points, days in lots:
        lot = Lot(new_id(), member_id, issuer, new_id(), points, points, Decimal("0.012"),
                  NOW - timedelta(days=1), NOW + timedelta(days=days), True, NOW)  # fmt: skip
        book.lots[lot.lot_id] = lot
    return book


def _ctx() -> Context:
    return Context(now=NOW, closed_until=NOW - timedelta(days=1), points_ttl=timedelta(days=1095),
                   ids=new_id)  # fmt: skip


def test_a_transfer_moves_lots_with_issuer_and_expiry_and_balances() -> None:
    sender = _book("mem_a", ("grocer", 300, 40), ("fuel", 500, 400))
    recipient = _book("mem_b")
    out, incoming = transfer(sender, recipient, _ctx(), 400, clearing_owner="trf_1",
                             sent_30d=0, limits=LIMITS)  # fmt: skip
    assert (out.type, incoming.type) == (PostingType.TRANSFER_OUT, PostingType.TRANSFER_IN)
    assert [(e.account, e.owner, e.amount) for e in (*out.entries, *incoming.entries)] == [
        (Account.AVAILABLE, "mem_a", -400), (Account.TRANSFER, "trf_1", 400),
        (Account.TRANSFER, "trf_1", -400), (Account.AVAILABLE, "mem_b", 400),
    ]  # fmt: skip
    moved = sorted((lot.issuer_id, lot.initial, lot.expires_at) for lot in recipient.lots.values())
    assert moved == [
        ("fuel", 100, NOW + timedelta(days=400)),
        ("grocer", 300, NOW + timedelta(days=40)),
    ]
    assert all(lot.source_lot_id in sender.lots for lot in recipient.lots.values())
    assert sum(lot.remaining for lot in sender.lots.values()) == 400


@pytest.mark.parametrize(
    ("points", "sent_30d", "error"),
    [
        (1001, 0, TransferLimitExceeded),
        (600, 901, TransferLimitExceeded),
        (801, 0, InsufficientPoints),
    ],
)
def test_refused_transfers_change_no_book(
    points: int, sent_30d: int, error: type[Exception]
) -> None:
    sender, recipient = _book("mem_a", ("grocer", 800, 40)), _book("mem_b")
    with pytest.raises(error):
        transfer(sender, recipient, _ctx(), points, clearing_owner="t", sent_30d=sent_30d,
                 limits=LIMITS)  # fmt: skip
    assert [lot.remaining for lot in sender.lots.values()] == [800]
    assert (sender.postings, recipient.postings, recipient.lots) == ([], [], {})
    with pytest.raises(Unprocessable):
        transfer(sender, sender, _ctx(), 1, clearing_owner="t", sent_30d=0, limits=LIMITS)
