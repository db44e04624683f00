"""Cut-offs at local midnight (EXCHANGE_SETTLEMENT_TIMEZONE): pure boundary arithmetic,
across both of Europe/Riga's daylight-saving changes (UTC+2 in winter, UTC+3 in summer)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from exchange.config import ConfigError, Settings, SettlementCycle
from settlement.schedule import boundary_at_or_before, due_boundaries, next_boundary

RIGA = ZoneInfo("Europe/Riga")


def _at(text_: str) -> datetime:
    return datetime.fromisoformat(text_).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("cycle", "moment", "floor", "following"),
    [
        # Month-end before summer time starts (Sunday 2027-03-28): March starts at 22:00
        # UTC (winter), April at 21:00 UTC (summer).
        ("monthly", "2027-03-15T12:00", "2027-02-28T22:00", "2027-03-31T21:00"),
        ("monthly", "2027-03-31T20:59", "2027-02-28T22:00", "2027-03-31T21:00"),
        ("monthly", "2027-03-31T21:00", "2027-03-31T21:00", "2027-04-30T21:00"),
        # Month-end around the return to winter time (Sunday 2026-10-25).
        ("monthly", "2026-10-15T12:00", "2026-09-30T21:00", "2026-10-31T22:00"),
        ("monthly", "2026-10-31T21:59", "2026-09-30T21:00", "2026-10-31T22:00"),
        ("monthly", "2026-10-31T22:00", "2026-10-31T22:00", "2026-11-30T22:00"),
        ("monthly", "2026-12-31T22:30", "2026-12-31T22:00", "2027-01-31T22:00"),  # new year
        # The days themselves: 23 hours long in March, 25 in October.
        ("daily", "2027-03-28T12:00", "2027-03-27T22:00", "2027-03-28T21:00"),
        ("daily", "2026-10-25T12:00", "2026-10-24T21:00", "2026-10-25T22:00"),
        # Weeks start on Monday, local time.
        ("weekly", "2027-03-28T20:59", "2027-03-21T22:00", "2027-03-28T21:00"),
        ("weekly", "2027-03-28T21:00", "2027-03-28T21:00", "2027-04-04T21:00"),
    ],
)
def test_cut_offs_fall_at_local_midnight(
    cycle: SettlementCycle, moment: str, floor: str, following: str
) -> None:
    assert boundary_at_or_before(_at(moment), cycle, RIGA) == _at(floor)
    assert next_boundary(_at(moment), cycle, RIGA) == _at(following)


def test_catching_up_over_a_dst_change_settles_each_local_month_once() -> None:
    after, now = _at("2027-01-31T22:00"), _at("2027-04-15T00:00")
    assert due_boundaries(after, now, "monthly", zone=RIGA) == [
        _at("2027-02-28T22:00"),
        _at("2027-03-31T21:00"),
    ]


def test_utc_stays_the_default() -> None:
    assert Settings().settlement_timezone == "UTC"
    assert next_boundary(_at("2027-03-15T12:00"), "monthly") == _at("2027-04-01T00:00")


def test_the_time_zone_is_checked_at_start() -> None:
    riga = Settings.from_env({"EXCHANGE_SETTLEMENT_TIMEZONE": "Europe/Riga"})
    assert riga.settlement_timezone == "Europe/Riga"
    with pytest.raises(ConfigError, match="EXCHANGE_SETTLEMENT_TIMEZONE"):
        Settings.from_env({"EXCHANGE_SETTLEMENT_TIMEZONE": "Mars/Olympus"})
