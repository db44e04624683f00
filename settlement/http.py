"""The settlement API (contract §6): thin controllers over `SettlementService`.

POST /v1/admin/settlements                 admin             201 new run, 200 existing
GET  /v1/settlements                       admin, finance    runs, newest first
GET  /v1/settlements/{run_id}              admin, finance    the run (JSON)
GET  /v1/settlements/{run_id}/report.csv   admin, finance    one row per partner
GET  /v1/settlements/{run_id}/statement    signed partner    its own line only
GET  /v1/reports/liabilities               admin, finance    outstanding points now, or the
                                                             roll-forward to ?as_of=<period_end>

Runs and statements show their approval `status` (contract §8); the approval itself and
the rest of closing the month are in `settlement.finance_http`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from exchange.errors import NotARunPeriodEnd, Unprocessable
from exchange.http import decode_body, wire_time
from exchange.openapi import api
from exchange.operators import OperatorIdentity
from exchange.operators.auth import admin_caller, staff_caller
from partners.auth import PartnerCaller, partner_caller
from settlement import reports, rollforward_views, schemas
from settlement.approval import Approval
from settlement.errors import PeriodClosed, SettlementNotFound
from settlement.finance import FinanceService
from settlement.service import RUNS_PAGE_MAX, SettlementService

__all__ = ["SettlementController", "with_status"]

Viewed = TypeVar("Viewed", schemas.Run, schemas.RunSummary, schemas.Statement)

RUNS_PAGE_DEFAULT = 50
# Two shapes behind one path: outstanding now, or a run's roll-forward (as_of).
_LIABILITIES = {
    "type": "object",
    "description": "Without as_of: outstanding points now (`as_of`, `partners`, `totals`). "
    "With as_of = a run's period_end: that period's roll-forward per issuer.",
}
Limit = Annotated[int, QueryParameter(ge=1, le=RUNS_PAGE_MAX)]


def with_status(view: Viewed, approval: Approval | None) -> Viewed:
    if approval is None:
        return view
    return msgspec.structs.replace(
        view,
        status="approved",
        approved_by=approval.approved_by,
        approved_at=approval.approved_at,
    )


async def _run_view(
    settlement: SettlementService, finance: FinanceService, run_id: str
) -> schemas.Run:
    run = await settlement.get_run(run_id)
    approvals = await finance.approvals([run_id])
    return with_status(reports.run_view(run), approvals.get(run_id))


class SettlementController(Controller):
    path = "/v1"
    tags = ["settlement"]

    @post(
        "/admin/settlements",
        status_code=201,
        dependencies={"admin": Provide(admin_caller)},
        summary="Run settlement until period_end (200 with the existing run if already run)",
        opt=api(
            body=schemas.SettlementCreate,
            responses={200: schemas.Run, 201: schemas.Run},
            errors=(PeriodClosed,),
            example={"period_end": "2026-11-01T00:00:00Z"},
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        admin: NamedDependency[OperatorIdentity],
        settlement: NamedDependency[SettlementService],
        finance: NamedDependency[FinanceService],
    ) -> Response[schemas.Run]:
        data = decode_body(request, await request.body(), schemas.SettlementCreate)
        result = await settlement.run_settlement(
            wire_time(data.period_end, "period_end"),
            created_by=f"operator:{admin.name}",
        )
        approvals = await finance.approvals([result.run.run_id])
        return Response(
            content=with_status(reports.run_view(result.run), approvals.get(result.run.run_id)),
            status_code=201 if result.created else 200,
        )

    @get(
        "/settlements",
        dependencies={"staff": Provide(staff_caller)},
        summary="Settlement runs, newest first",
        opt=api(responses={200: schemas.RunPage}),
    )
    async def list_runs(
        self,
        staff: NamedDependency[OperatorIdentity],
        settlement: NamedDependency[SettlementService],
        finance: NamedDependency[FinanceService],
        after: FromQuery[str | None] = None,
        limit: Limit = RUNS_PAGE_DEFAULT,
    ) -> schemas.RunPage:
        headers, cursor = await settlement.list_runs(limit=limit, after=after)
        approvals = await finance.approvals([h.run_id for h in headers])
        return schemas.RunPage(
            items=[with_status(reports.run_summary(h), approvals.get(h.run_id)) for h in headers],
            next=cursor,
        )

    @get(
        "/settlements/{run_id:str}",
        dependencies={"staff": Provide(staff_caller)},
        summary="A run: partner lines, cross-brand matrix, controls",
        opt=api(responses={200: schemas.Run}, errors=(SettlementNotFound,)),
    )
    async def get_run(
        self,
        staff: NamedDependency[OperatorIdentity],
        settlement: NamedDependency[SettlementService],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> schemas.Run:
        return await _run_view(settlement, finance, run_id)

    @get(
        "/settlements/{run_id:str}/report.csv",
        dependencies={"staff": Provide(staff_caller)},
        summary="A run as CSV, one row per partner",
        media_type="text/csv",
        opt=api(errors=(SettlementNotFound,)),
    )
    async def report_csv(
        self,
        staff: NamedDependency[OperatorIdentity],
        settlement: NamedDependency[SettlementService],
        run_id: FromPath[str],
    ) -> Response[str]:
        run = await settlement.get_run(run_id)
        return Response(
            content=reports.run_csv(run),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{run.run_id}.csv"'},
        )

    @get(
        "/settlements/{run_id:str}/statement",
        dependencies={"partner": Provide(partner_caller)},
        summary="The calling partner's own line of a run",
        opt=api(responses={200: schemas.Statement}, errors=(SettlementNotFound,)),
    )
    async def statement(
        self,
        partner: NamedDependency[PartnerCaller],
        settlement: NamedDependency[SettlementService],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> schemas.Statement:
        run = await settlement.get_run(run_id)
        approvals = await finance.approvals([run_id])
        return with_status(reports.statement_view(run, partner.partner_id), approvals.get(run_id))

    @get(
        "/reports/liabilities",
        dependencies={"staff": Provide(staff_caller)},
        summary="Outstanding points per issuing partner now, valued and aged by expiry",
        opt=api(
            responses={200: _LIABILITIES},
            media_types=("text/csv",),
            errors=(NotARunPeriodEnd,),
        ),
    )
    async def liabilities(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        settlement: NamedDependency[SettlementService],
        as_of: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Without as_of: outstanding now (v1). With as_of = a run's period_end: the
        roll-forward of that run's period per issuer (§8), JSON or CSV (Accept)."""
        service = settlement
        if as_of is None:
            now, rows, items = await service.liabilities_report()
            return Response(content=reports.liabilities_view(now, rows, items))
        moment = rollforward_views.parse_as_of(as_of)
        if moment is None:
            raise Unprocessable("as_of must be an RFC 3339 time: a run's period_end.")
        report = await service.roll_forward(moment)
        if "text/csv" in request.headers.get("accept", ""):
            return Response(
                content=rollforward_views.roll_forward_csv(report),
                media_type="text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": f'attachment; filename="liabilities-{report.run_id}.csv"'
                },
            )
        return Response(content=rollforward_views.roll_forward_view(report))
