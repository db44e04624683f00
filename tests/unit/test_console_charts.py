"""The console's chart geometry (pure): bars scale to the largest value, heat-map bins."""

from __future__ import annotations

from exchange.console.charts import CHART_W, HEAT_BINS, bar_chart, heat_map


def test_bars_scale_to_the_largest_value_and_keep_their_captions() -> None:
    chart = bar_chart("t", [("a", 50, "50 pts"), ("b", 200, "200 pts"), ("c", 0, "0 pts")])
    assert [bar.width for bar in chart.bars] == [CHART_W // 4, CHART_W, 0]
    assert [bar.caption for bar in chart.bars] == ["50 pts", "200 pts", "0 pts"]
    assert chart.bars[1].y > chart.bars[0].y


def test_an_empty_or_all_zero_chart_draws_no_bars_and_does_not_divide_by_zero() -> None:
    assert bar_chart("t", []).bars == ()
    assert [bar.width for bar in bar_chart("t", [("a", 0, ""), ("b", -5, "")]).bars] == [0, 0]


def test_heat_map_bins_nothing_as_zero_and_the_largest_flow_as_the_top_bin() -> None:
    heat = heat_map([("grocer", "cinema", 500), ("fuel", "fuel", 200), ("grocer", "grocer", 1)],
                    ["cinema", "fuel", "grocer"])  # fmt: skip
    assert heat.issuers == heat.redeemers == ("cinema", "fuel", "grocer")
    cells = {
        (issuer, redeemer): cell
        for issuer, row in zip(heat.issuers, heat.rows, strict=True)
        for redeemer, cell in zip(heat.redeemers, row, strict=True)
    }
    assert cells["grocer", "cinema"].bin == HEAT_BINS - 1
    assert cells["fuel", "fuel"].bin == 2  # 200/500 of the way, rounded up
    assert cells["grocer", "grocer"].bin == 1  # any flow at all is visible
    assert cells["cinema", "fuel"].points == 0
    assert cells["cinema", "fuel"].bin == 0


def test_a_partner_named_only_by_a_flow_still_gets_a_row_and_a_column() -> None:
    heat = heat_map([("gone", "grocer", 10)], ["grocer"])
    assert heat.issuers == ("gone", "grocer")
