"""Views of runs and liabilities: JSON structs, the CSV report, a partner's statement.

Pure functions from stored runs to what finance reads; no I/O.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from exchange.money import format_amount, round_money
from exchange.schemas import MoneyOut
from settlement import schemas
from settlement.engine import Checks, Controls, CrossBrandFlow, Line
from settlement.errors import SettlementNotFound
from settlement.store import LiabilityReconciliation, LiabilityRow, RunHeader, StoredRun

__all__ = [
    "CSV_COLUMNS",
    "format_time",
    "liabilities_view",
    "plain_decimal",
    "run_csv",
    "run_summary",
    "run_view",
    "statement_view",
]

CSV_COLUMNS = (
    "run_id",
    "period_start",
    "period_end",
    "reconciled",
    "partner_id",
    "partner_name",
    "currency",
    "issued_points",
    "redeemed_points",
    "expired_points",
    "earned_points",
    "earn_reversed_points",
    "burned_points",
    "burn_reversed_points",
    "issuance_charge",
    "redemption_credit",
    "net",
    "direction",
    "issuance_charge_exact",
    "redemption_credit_exact",
    "net_exact",
    "expired_value",
    "rounding_difference",
    "final",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def plain_decimal(value: Decimal) -> str:
    """An exact amount without exponent or trailing zeros: 12000.000000 -> "12000"."""
    if value == 0:
        return "0"
    return f"{value.normalize():f}"


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a Z, as the API writes times."""
    text = moment.isoformat(timespec="microseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _money(amount: Decimal, currency: str) -> MoneyOut:
    return MoneyOut(format_amount(amount, currency), currency)


def _direction(line: Line) -> schemas.Direction:
    if line.net > 0:
        return "partner_pays"
    if line.net < 0:
        return "operator_pays"
    return "none"


def _line(line: Line) -> schemas.SettlementLineOut:
    return schemas.SettlementLineOut(
        partner_id=line.partner_id,
        partner_name=line.partner_name,
        currency=line.currency,
        issued_points=line.issued_points,
        redeemed_points=line.redeemed_points,
        expired_points=line.expired_points,
        earned_points=line.earned_points,
        earn_reversed_points=line.earn_reversed_points,
        burned_points=line.burned_points,
        burn_reversed_points=line.burn_reversed_points,
        issuance_charge=_money(line.issuance_charge, line.currency),
        redemption_credit=_money(line.redemption_credit, line.currency),
        net=_money(line.net, line.currency),
        direction=_direction(line),
        exact=schemas.ExactAmounts(
            issuance_charge=plain_decimal(line.issuance_charge_exact),
            redemption_credit=plain_decimal(line.redemption_credit_exact),
            net=plain_decimal(line.net_exact),
            expired_value=plain_decimal(line.expired_value_exact),
        ),
        expired_value=_money(round_money(line.expired_value_exact, line.currency), line.currency),
        rounding_difference=_money(line.rounding_difference, line.currency),
        final=line.final,
    )


def _flow(flow: CrossBrandFlow) -> schemas.CrossBrand:
    return schemas.CrossBrand(flow.issuer_id, flow.redeemer_id, flow.points)


def _controls(controls: Controls, checks: Checks) -> schemas.Controls:
    return schemas.Controls(
        issued=controls.issued,
        redeemed=controls.redeemed,
        expired=controls.expired,
        reversed=controls.reversed,
        earn_reversed=controls.earn_reversed,
        burn_reversed=controls.burn_reversed,
        outstanding_start=controls.outstanding_start,
        outstanding_end=controls.outstanding_end,
        adjusted=controls.adjusted,
        checks=schemas.Checks(
            conservation=checks.conservation,
            partner_accounts=checks.partner_accounts,
            cross_brand=checks.cross_brand,
            continuity=checks.continuity,
        ),
    )


def run_summary(header: RunHeader) -> schemas.RunSummary:
    return schemas.RunSummary(
        run_id=header.run_id,
        period_start=header.period_start,
        period_end=header.period_end,
        created_at=header.created_at,
        created_by=header.created_by,
        reconciled=header.reconciled,
        controls=_controls(header.controls, header.checks),
    )


def run_view(run: StoredRun) -> schemas.Run:
    header = run.header
    return schemas.Run(
        run_id=header.run_id,
        period_start=header.period_start,
        period_end=header.period_end,
        created_at=header.created_at,
        created_by=header.created_by,
        reconciled=header.reconciled,
        lines=[_line(line) for line in run.settlement.lines],
        cross_brand=[_flow(flow) for flow in run.settlement.cross_brand],
        controls=_controls(header.controls, header.checks),
    )


def statement_view(run: StoredRun, partner_id: str) -> schemas.Statement:
    """The partner's own line and the flows it is issuer or redeemer in; nothing else.
    A partner without a line in the run gets the same 404 as an unknown run."""
    line = next((line for line in run.settlement.lines if line.partner_id == partner_id), None)
    if line is None:
        raise SettlementNotFound(f"No settlement run {run.run_id} for {partner_id}.")
    header = run.header
    return schemas.Statement(
        run_id=header.run_id,
        period_start=header.period_start,
        period_end=header.period_end,
        created_at=header.created_at,
        reconciled=header.reconciled,
        partner_id=partner_id,
        line=_line(line),
        cross_brand=[
            _flow(flow)
            for flow in run.settlement.cross_brand
            if partner_id in (flow.issuer_id, flow.redeemer_id)
        ],
    )


def _cell(text: str) -> str:
    """Spreadsheets execute cells starting with = + - @ (OWASP "CSV injection"), also
    after leading spaces, and treat a leading tab, CR or LF as the same risk: such cells
    get a leading apostrophe, which spreadsheets show as text."""
    stripped = text.lstrip(" \t\r\n")
    risky = stripped.startswith(_FORMULA_PREFIXES) or text[:1] in ("\t", "\r", "\n")
    return "'" + text if risky else text


def run_csv(run: StoredRun) -> str:
    """One header row, then one row per partner. The run's reconciled flag is on every
    row so that filtering or sorting in a spreadsheet can never hide it."""
    header = run.header
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in run.settlement.lines:
        writer.writerow(
            [
                header.run_id,
                format_time(header.period_start),
                format_time(header.period_end),
                "true" if header.reconciled else "false",
                line.partner_id,
                _cell(line.partner_name),
                line.currency,
                line.issued_points,
                line.redeemed_points,
                line.expired_points,
                line.earned_points,
                line.earn_reversed_points,
                line.burned_points,
                line.burn_reversed_points,
                format_amount(line.issuance_charge, line.currency),
                format_amount(line.redemption_credit, line.currency),
                format_amount(line.net, line.currency),
                _direction(line),
                plain_decimal(line.issuance_charge_exact),
                plain_decimal(line.redemption_credit_exact),
                plain_decimal(line.net_exact),
                format_amount(round_money(line.expired_value_exact, line.currency), line.currency),
                format_amount(line.rounding_difference, line.currency),
                "true" if line.final else "false",
            ]
        )
    return buffer.getvalue()


def _bucket(points: int, value: Decimal, currency: str) -> schemas.AgeingBucket:
    return schemas.AgeingBucket(points=points, value=_money(value, currency))


def _reconciliation(
    outstanding: int, items: LiabilityReconciliation
) -> schemas.LiabilityReconciliation:
    return schemas.LiabilityReconciliation(
        outstanding_points=outstanding,
        expired_not_yet_swept=items.expired_not_yet_swept,
        held_on_expired_lots=items.held_on_expired_lots,
        member_debt=items.member_debt,
        member_accounts=items.member_accounts,
        ties=items.member_accounts
        == outstanding
        + items.expired_not_yet_swept
        + items.held_on_expired_lots
        - items.member_debt,
    )


def liabilities_view(
    as_of: datetime,
    rows: Sequence[LiabilityRow],
    reconciliation: LiabilityReconciliation | None = None,
) -> schemas.LiabilityReport:
    partners = []
    totals: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for row in rows:
        points = sum(points for points, _ in row.buckets)
        value = sum((value for _, value in row.buckets), Decimal(0))
        (b30, b90, b365, later) = row.buckets
        partners.append(
            schemas.PartnerLiability(
                partner_id=row.partner_id,
                partner_name=row.partner_name,
                currency=row.currency,
                outstanding_points=points,
                held_points=row.held_points,
                value=_money(value, row.currency),
                value_exact=plain_decimal(value),
                ageing=schemas.Ageing(
                    within_30_days=_bucket(*b30, row.currency),
                    within_90_days=_bucket(*b90, row.currency),
                    within_365_days=_bucket(*b365, row.currency),
                    later=_bucket(*later, row.currency),
                ),
            )
        )
        totals[row.currency][0] += points
        totals[row.currency][1] += value
    return schemas.LiabilityReport(
        as_of=as_of,
        partners=partners,
        totals=[
            schemas.CurrencyTotal(currency, int(points), _money(value, currency))
            for currency, (points, value) in sorted(totals.items())
        ],
        reconciliation=_reconciliation(
            sum(partner.outstanding_points for partner in partners), reconciliation
        )
        if reconciliation is not None
        else None,
    )
