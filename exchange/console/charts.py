"""Pictures of numbers, drawn on the server: geometry for inline SVG bar charts and the
colour bins of the cross-brand heat map. Pure functions; the templates draw the result.

Every chart also shows its numbers as text (a label on each bar, a number in each heat-map
cell), so nothing is conveyed by length or colour alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CHART_W",
    "HEAT_BINS",
    "Bar",
    "BarChart",
    "HeatCell",
    "HeatMap",
    "bar_chart",
    "heat_map",
]

HEAT_BINS = 6  # heat-0 (nothing) .. heat-5 (the largest flow); colours in console.css
# Each row: its label and value as text on one line, the bar under it. Narrow enough that a
# card on a phone shows the text at nearly full size.
CHART_W = 400
ROW_H = 44
TEXT_H = 16
BAR_H = 18


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    caption: str  # the value as shown, e.g. "12,000 pts · EUR 144.00"
    y: int
    width: int


@dataclass(frozen=True, slots=True)
class BarChart:
    title: str
    bars: tuple[Bar, ...]
    width: int
    height: int
    text_h: int = TEXT_H
    bar_h: int = BAR_H


def bar_chart(title: str, items: Sequence[tuple[str, int, str]]) -> BarChart:
    """Horizontal bars scaled to the largest value (negative values draw as empty bars)."""
    largest = max((value for _, value, _ in items), default=0)
    bars = tuple(
        Bar(
            label=label,
            value=value,
            caption=caption,
            y=index * ROW_H,
            width=(max(value, 0) * CHART_W // largest) if largest > 0 else 0,
        )
        for index, (label, value, caption) in enumerate(items)
    )
    return BarChart(
        title=title,
        bars=bars,
        width=CHART_W,
        height=max(len(bars), 1) * ROW_H,
    )


@dataclass(frozen=True, slots=True)
class HeatCell:
    points: int
    bin: int


@dataclass(frozen=True, slots=True)
class HeatMap:
    issuers: tuple[str, ...]  # rows
    redeemers: tuple[str, ...]  # columns
    rows: tuple[tuple[HeatCell, ...], ...]


def heat_map(flows: Sequence[tuple[str, str, int]], partners: Sequence[str]) -> HeatMap:
    """An issuer x redeemer matrix over `partners` (plus any partner a flow names), each
    cell binned by its share of the largest flow: 0 only for no points at all."""
    names = sorted(set(partners) | {f[0] for f in flows} | {f[1] for f in flows})
    cells = {(issuer, redeemer): points for issuer, redeemer, points in flows}
    largest = max((abs(points) for points in cells.values()), default=0)

    def binned(points: int) -> int:
        if points == 0 or largest == 0:
            return 0
        return max(1, -(-abs(points) * (HEAT_BINS - 1) // largest))  # ceil, 1..5

    rows = tuple(
        tuple(
            HeatCell(cells.get((issuer, redeemer), 0), binned(cells.get((issuer, redeemer), 0)))
            for redeemer in names
        )
        for issuer in names
    )
    return HeatMap(issuers=tuple(names), redeemers=tuple(names), rows=rows)
