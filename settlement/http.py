"""The settlement API (contract §6): thin controllers over `SettlementService`.

POST /v1/admin/settlements                 admin             201 new run, 200 existing
GET  /v1/settlements                       admin, finance    runs, newest first
GET  /v1/settlements/{run_id}              admin, finance    the run (JSON)
GET  /v1/settlements/{run_id}/report.csv   admin, finance    one row per partner
GET  /v1/settlements/{run_id}/statement    signed partner    its own line only
GET  /v1/reports/liabilities               admin, finance    outstanding points now

Runs and statements show their approval `status` (contract §8); the approval itself and
the rest of closing the month are in `settlement.finance_http`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from exchange.http import decode_body
from exchange.operators import OperatorIdentity
from exchange.runtime import services_of
from partners.auth import PartnerCaller, admin_caller, partner_caller, staff_caller
from settlement import reports, schemas
from settlement.approval import Approval
from settlement.finance import FinanceService
from settlement.journal import ChartOfAccounts
from settlement.service import RUNS_PAGE_MAX, SettlementService

__all__ = ["SettlementController", "finance_service", "settlement_service", "with_status"]

Viewed = TypeVar("Viewed", schemas.Run, schemas.RunSummary, schemas.Statement)

RUNS_PAGE_DEFAULT = 50
Limit = Annotated[int, QueryParameter(ge=1, le=RUNS_PAGE_MAX)]


def settlement_service(request: Request[Any, Any, Any]) -> SettlementService:
    """The service over this process's engine, clock and ledger (stateless, cheap)."""
    services = services_of(request)
    return SettlementService(services.engine, services.clock, services.ledger)


def finance_service(request: Request[Any, Any, Any]) -> FinanceService:
    """Closing the month over this process's engine and clock, in its chart of accounts."""
    services = services_of(request)
    settings = services.settings
    chart = ChartOfAccounts(
        receivable=settings.account_receivable,
        payable=settings.account_payable,
        points_liability=settings.account_points_liability,
        redemption_margin=settings.account_redemption_margin,
        breakage_revenue=settings.account_breakage_revenue,
        rounding=settings.account_rounding,
    )
    return FinanceService(services.engine, services.clock, chart)


def with_status(view: Viewed, approval: Approval | None) -> Viewed:
    if approval is None:
        return view
    return msgspec.structs.replace(
        view,
        status="approved",
        approved_by=approval.approved_by,
        approved_at=approval.approved_at,
    )


async def _run_view(request: Request[Any, Any, Any], run_id: str) -> schemas.Run:
    run = await settlement_service(request).get_run(run_id)
    approvals = await finance_service(request).approvals([run_id])
    return with_status(reports.run_view(run), approvals.get(run_id))


class SettlementController(Controller):
    path = "/v1"
    tags = ["settlement"]

    @post(
        "/admin/settlements",
        status_code=201,
        dependencies={"admin": Provide(admin_caller)},
        summary="Run settlement until period_end (200 with the existing run if already run)",
    )
    async def create(
        self, request: Request[Any, Any, Any], admin: NamedDependency[OperatorIdentity]
    ) -> Response[schemas.Run]:
        data = decode_body(request, await request.body(), schemas.SettlementCreate)
        result = await settlement_service(request).run_settlement(
            data.period_end, created_by=f"operator:{admin.name}"
        )
        approvals = await finance_service(request).approvals([result.run.run_id])
        return Response(
            content=with_status(reports.run_view(result.run), approvals.get(result.run.run_id)),
            status_code=201 if result.created else 200,
        )

    @get(
        "/settlements",
        dependencies={"staff": Provide(staff_caller)},
        summary="Settlement runs, newest first",
    )
    async def list_runs(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        after: FromQuery[str | None] = None,
        limit: Limit = RUNS_PAGE_DEFAULT,
    ) -> schemas.RunPage:
        headers, cursor = await settlement_service(request).list_runs(limit=limit, after=after)
        approvals = await finance_service(request).approvals([h.run_id for h in headers])
        return schemas.RunPage(
            items=[with_status(reports.run_summary(h), approvals.get(h.run_id)) for h in headers],
            next=cursor,
        )

    @get(
        "/settlements/{run_id:str}",
        dependencies={"staff": Provide(staff_caller)},
        summary="A run: partner lines, cross-brand matrix, controls",
    )
    async def get_run(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        run_id: FromPath[str],
    ) -> schemas.Run:
        return await _run_view(request, run_id)

    @get(
        "/settlements/{run_id:str}/report.csv",
        dependencies={"staff": Provide(staff_caller)},
        summary="A run as CSV, one row per partner",
        media_type="text/csv",
    )
    async def report_csv(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        run_id: FromPath[str],
    ) -> Response[str]:
        run = await settlement_service(request).get_run(run_id)
        return Response(
            content=reports.run_csv(run),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{run.run_id}.csv"'},
        )

    @get(
        "/settlements/{run_id:str}/statement",
        dependencies={"partner": Provide(partner_caller)},
        summary="The calling partner's own line of a run",
    )
    async def statement(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        run_id: FromPath[str],
    ) -> schemas.Statement:
        run = await settlement_service(request).get_run(run_id)
        approvals = await finance_service(request).approvals([run_id])
        return with_status(reports.statement_view(run, partner.partner_id), approvals.get(run_id))

    @get(
        "/reports/liabilities",
        dependencies={"staff": Provide(staff_caller)},
        summary="Outstanding points per issuing partner now, valued and aged by expiry",
    )
    async def liabilities(
        self, request: Request[Any, Any, Any], staff: NamedDependency[OperatorIdentity]
    ) -> schemas.LiabilityReport:
        as_of, rows = await settlement_service(request).liabilities()
        return reports.liabilities_view(as_of, rows)
