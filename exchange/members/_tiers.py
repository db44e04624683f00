"""Tiers: a member's coalition-wide status, derived from the journal (never stored).

Qualifying points = points earned in the trailing 365 days minus the earn reversals of
those earns. Transfers, burns, expiry and adjustments never qualify: a tier measures what
partners issued to the member, not what moved between members. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["QUALIFYING_WINDOW", "TierStatus", "tier_status"]

QUALIFYING_WINDOW = timedelta(days=365)


@dataclass(frozen=True, slots=True)
class TierStatus:
    name: str
    qualifying_points: int
    next_name: str | None = None
    points_needed: int | None = None


def tier_status(qualifying_points: int, tiers: Sequence[tuple[str, int]]) -> TierStatus:
    """The highest tier whose threshold the points reach, and what the next one needs.
    `tiers` is ascending from a threshold of 0 (EXCHANGE_TIERS is validated so)."""
    current = tiers[0]
    following: tuple[str, int] | None = None
    for tier in tiers:
        if qualifying_points >= tier[1]:
            current = tier
        elif following is None:
            following = tier
    if following is None:
        return TierStatus(current[0], qualifying_points)
    return TierStatus(current[0], qualifying_points, following[0], following[1] - qualifying_points)
