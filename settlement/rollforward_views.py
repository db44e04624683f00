"""The liability roll-forward as finance reads it: JSON and CSV. Pure, no I/O.

Every figure is `{"points", "value": money, "value_exact"}`: value at the prices the
points were issued at, exact (up to 6 decimals) and rounded once to the currency's minor
unit. Points and exact values foot exactly; the rounded values of one issuer can differ
from their sum by a few minor units, which `rounding_difference` shows so the row foots.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from exchange.money import format_amount, round_money
from settlement.reports import format_time, plain_decimal
from settlement.rollforward import Figure, IssuerRollForward, RollForwardReport

__all__ = ["parse_as_of", "roll_forward_csv", "roll_forward_view"]


def _money(amount: Decimal, currency: str) -> dict[str, str]:
    return {"amount": format_amount(amount, currency), "currency": currency}


def _figure(figure: Figure, currency: str) -> dict[str, Any]:
    return {
        "points": figure.points,
        "value": _money(round_money(figure.value, currency), currency),
        "value_exact": plain_decimal(figure.value),
    }


def _rounding_difference(issuer: IssuerRollForward) -> Decimal:
    currency = issuer.currency
    parts = [issuer.opening, *issuer.movements.values()]
    rounded = sum((round_money(part.value, currency) for part in parts), Decimal(0))
    return round_money(issuer.closing.value, currency) - rounded


def _names(report: RollForwardReport) -> list[str]:
    names: dict[str, None] = {}
    for issuer in report.forward.issuers:
        names.update(dict.fromkeys(issuer.movements))
    return ["opening", *names, "closing"]


def _issuer(issuer: IssuerRollForward) -> dict[str, Any]:
    currency = issuer.currency
    body: dict[str, Any] = {
        "issuer": issuer.issuer_id,
        "issuer_name": issuer.issuer_name,
        "currency": currency,
        "opening": _figure(issuer.opening, currency),
    }
    body |= {name: _figure(figure, currency) for name, figure in issuer.movements.items()}
    body["closing"] = _figure(issuer.closing, currency)
    expired = issuer.movements.get("expired", Figure())
    body["expired_value"] = _money(round_money(-expired.value, currency), currency)
    body["rounding_difference"] = _money(_rounding_difference(issuer), currency)
    return body


def _totals(report: RollForwardReport) -> list[dict[str, Any]]:
    by_currency: dict[str, dict[str, Figure]] = defaultdict(lambda: defaultdict(Figure))
    for issuer in report.forward.issuers:
        figures = by_currency[issuer.currency]
        figures["opening"] += issuer.opening
        for name, figure in issuer.movements.items():
            figures[name] += figure
        figures["closing"] += issuer.closing
    return [
        {"currency": currency} | {name: _figure(f, currency) for name, f in figures.items()}
        for currency, figures in sorted(by_currency.items())
    ]


def roll_forward_view(report: RollForwardReport) -> dict[str, Any]:
    forward = report.forward
    opening = sum(issuer.opening.points for issuer in forward.issuers)
    closing = sum(issuer.closing.points for issuer in forward.issuers)
    return {
        "as_of": format_time(report.period_end),
        "run_id": report.run_id,
        "period_start": format_time(report.period_start),
        "period_end": format_time(report.period_end),
        "reconciled": report.reconciled,
        "issuers": [_issuer(issuer) for issuer in forward.issuers],
        "totals": _totals(report),
        "reconciliation": {
            "issuers_opening": opening,
            "member_debt_opening": forward.member_debt_opening,
            "outstanding_start": report.outstanding_start,
            "issuers_closing": closing,
            "member_debt_closing": forward.member_debt_closing,
            "outstanding_end": report.outstanding_end,
            "ties_to_run": report.ties.opening_to_outstanding_start
            and report.ties.closing_to_outstanding_end,
            "movements_tie_to_controls": report.ties.movements_to_controls,
        },
    }


def roll_forward_csv(report: RollForwardReport) -> str:
    """One row per issuer: points and rounded value of every figure, left to right in the
    order they add up (opening, movements, closing)."""
    names = _names(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    header = ["as_of", "run_id", "issuer", "currency"]
    for name in names:
        header += [f"{name}_points", f"{name}_value"]
    writer.writerow([*header, "rounding_difference", "ties_to_run"])
    tied = "true" if report.ties.all else "false"
    for issuer in report.forward.issuers:
        figures = {"opening": issuer.opening, **issuer.movements, "closing": issuer.closing}
        row: list[Any] = [format_time(report.period_end), report.run_id, issuer.issuer_id]
        row.append(issuer.currency)
        for name in names:
            figure = figures.get(name, Figure())
            row += [
                figure.points,
                format_amount(round_money(figure.value, issuer.currency), issuer.currency),
            ]
        row += [format_amount(_rounding_difference(issuer), issuer.currency), tied]
        writer.writerow(row)
    return buffer.getvalue()


def parse_as_of(value: str) -> datetime | None:
    """An RFC 3339 time (any offset); None when it is not one."""
    try:
        moment = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
