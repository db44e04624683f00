"""The settlement API (contract §6): thin controllers over `SettlementService`.

POST /v1/admin/settlements                 admin             201 new run, 200 existing
GET  /v1/settlements                       admin, finance    runs, newest first
GET  /v1/settlements/{run_id}              admin, finance    the run (JSON)
GET  /v1/settlements/{run_id}/report.csv   admin, finance    one row per partner
GET  /v1/settlements/{run_id}/statement    signed partner    its own line only
GET  /v1/reports/liabilities               admin, finance    outstanding points now, or the
                                                             roll-forward to ?as_of=<period_end>
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from exchange.errors import Unprocessable
from exchange.http import decode_body
from exchange.operators import OperatorIdentity
from exchange.runtime import services_of
from partners.auth import PartnerCaller, admin_caller, partner_caller, staff_caller
from settlement import reports, rollforward_views, schemas
from settlement.service import RUNS_PAGE_MAX, SettlementService

__all__ = ["SettlementController", "settlement_service"]

RUNS_PAGE_DEFAULT = 50
Limit = Annotated[int, QueryParameter(ge=1, le=RUNS_PAGE_MAX)]


def settlement_service(request: Request[Any, Any, Any]) -> SettlementService:
    """The service over this process's engine, clock and ledger (stateless, cheap)."""
    services = services_of(request)
    return SettlementService(services.engine, services.clock, services.ledger)


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
        return Response(
            content=reports.run_view(result.run), status_code=201 if result.created else 200
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
        return schemas.RunPage(items=[reports.run_summary(h) for h in headers], next=cursor)

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
        return reports.run_view(await settlement_service(request).get_run(run_id))

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
        return reports.statement_view(run, partner.partner_id)

    @get(
        "/reports/liabilities",
        dependencies={"staff": Provide(staff_caller)},
        summary="Outstanding points per issuing partner now, valued and aged by expiry",
    )
    async def liabilities(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        as_of: FromQuery[str | None] = None,
    ) -> Response[Any]:
        """Without as_of: outstanding now (v1). With as_of = a run's period_end: the
        roll-forward of that run's period per issuer (§8), JSON or CSV (Accept)."""
        service = settlement_service(request)
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
