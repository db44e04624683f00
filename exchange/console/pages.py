"""The console's read pages: overview, runs, a run, a statement with its postings,
liabilities, partners. Each calls the same services and report views as the JSON API, so
a number on a page is the number the API gives."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from exchange.console import charts
from exchange.console._web import render
from exchange.console.finance import receivables_due
from exchange.console.sessions import ConsoleSession
from exchange.errors import Unprocessable
from exchange.wiring import Services
from partners import registry
from partners.webhooks.service import WebhookService
from settlement import reports, rollforward_views
from settlement.errors import SettlementNotFound
from settlement.finance import FinanceService
from settlement.finance_views import document_view, receivables_view
from settlement.service import SettlementService

__all__ = ["ConsolePages"]

RUNS_PAGE = 25
POSTINGS_SHOWN_MAX = 500
After = Annotated[str | None, QueryParameter(max_length=64)]
AsOfTime = Annotated[str | None, QueryParameter(max_length=40)]


def _liability_chart(report: Any) -> charts.BarChart:
    return charts.bar_chart(
        "Outstanding points by issuer",
        [
            (
                line.partner_name,
                line.outstanding_points,
                f"{line.outstanding_points:,} pts · {line.value.currency} {line.value.amount}",
            )
            for line in report.partners
        ],
    )


def _period_chart(preview: Any) -> charts.BarChart:
    controls = preview.controls
    return charts.bar_chart(
        "This period so far",
        [
            ("Issued", controls.issued, f"{controls.issued:,} pts"),
            ("Redeemed", controls.redeemed, f"{controls.redeemed:,} pts"),
            ("Expired", controls.expired, f"{controls.expired:,} pts"),
        ],
    )


def _figure_names(view: dict[str, Any]) -> list[str]:
    """The roll-forward's rows, top to bottom: opening, each movement, closing."""
    names: dict[str, None] = {}
    for issuer in view["issuers"]:
        names.update((k, None) for k, v in issuer.items() if isinstance(v, dict) and "points" in v)
    middle = [name for name in names if name not in ("opening", "closing")]
    return ["opening", *middle, "closing"]


class ConsolePages(Controller):
    path = "/"

    @get("/", name="console-overview")
    async def overview(
        self,
        request: Request[Any, Any, Any],
        *,
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
        finance: NamedDependency[FinanceService],
        services: NamedDependency[Services],
        webhooks: NamedDependency[WebhookService],
    ) -> Template:
        as_of, rows = await settlement.liabilities()
        report = reports.liabilities_view(as_of, rows)
        preview = await settlement.open_period()
        latest = await settlement.latest_run()
        today = services.clock.now().date()
        receivables = receivables_view(today, await finance.receivables(today))
        return render(
            "overview.html",
            session,
            request,
            report=report,
            liability_chart=_liability_chart(report),
            preview=preview,
            period_chart=_period_chart(preview),
            latest=reports.run_summary(latest) if latest is not None else None,
            receivables=receivables,
            due=receivables_due(receivables),
            webhook_backlog=await webhooks.backlog(),
        )

    @get("/runs")
    async def runs(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
        after: FromQuery[After] = None,
    ) -> Template:
        headers, cursor = await settlement.list_runs(limit=RUNS_PAGE, after=after)
        return render(
            "runs.html",
            session,
            request,
            runs=[reports.run_summary(header) for header in headers],
            next_cursor=cursor,
        )

    @get("/runs/{run_id:str}")
    async def run(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
        finance: NamedDependency[FinanceService],
        run_id: FromPath[str],
    ) -> Template:
        run = reports.run_view(await settlement.get_run(run_id))
        flows = [(flow.issuer_id, flow.redeemer_id, flow.points) for flow in run.cross_brand]
        heat = charts.heat_map(flows, [line.partner_id for line in run.lines])
        approval = (await finance.approvals([run_id])).get(run_id)
        documents = [document_view(d) for d in await finance.run_documents(run_id)]
        return render(
            "run.html",
            session,
            request,
            run=run,
            heat=heat,
            approval=approval,
            documents=documents,
            period_end=reports.format_time(run.period_end),
        )

    @get("/runs/{run_id:str}/report.csv", media_type="text/csv")
    async def run_csv(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
        run_id: FromPath[str],
    ) -> Response[str]:
        """The API's CSV (one row per partner), for a browser that has no bearer token."""
        run = await settlement.get_run(run_id)
        return Response(
            content=reports.run_csv(run),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{run.run_id}.csv"'},
        )

    @get("/runs/{run_id:str}/statements/{partner_id:str}")
    async def statement(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
        run_id: FromPath[str],
        partner_id: FromPath[str],
    ) -> Template:
        stored, postings = await settlement.line_postings(
            run_id, partner_id, limit=POSTINGS_SHOWN_MAX + 1
        )
        if partner_id not in {line.partner_id for line in stored.settlement.lines}:
            raise SettlementNotFound(f"Run {run_id} has no line for partner {partner_id}.")
        totals: dict[str, int] = {}
        for posting in postings[:POSTINGS_SHOWN_MAX]:
            totals[posting.type] = totals.get(posting.type, 0) + posting.points
        return render(
            "statement.html",
            session,
            request,
            statement=reports.statement_view(stored, partner_id),
            postings=postings[:POSTINGS_SHOWN_MAX],
            truncated=len(postings) > POSTINGS_SHOWN_MAX,
            totals=totals,
        )

    @get("/liabilities")
    async def liabilities(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
        as_of: FromQuery[AsOfTime] = None,
    ) -> Template:
        """Outstanding now; with `?as_of=` a run's period_end, that period's roll-forward
        per issuer (the API's GET /v1/reports/liabilities?as_of=, the same figures)."""
        if as_of is not None:
            moment = rollforward_views.parse_as_of(as_of)
            if moment is None:
                raise Unprocessable("as_of must be an RFC 3339 time: a run's period_end.")
            forward = await settlement.roll_forward(moment)
            view = rollforward_views.roll_forward_view(forward)
            return render(
                "rollforward.html", session, request, report=view, figures=_figure_names(view)
            )
        now, rows = await settlement.liabilities()
        report = reports.liabilities_view(now, rows)
        return render(
            "liabilities.html", session, request, report=report, chart=_liability_chart(report)
        )

    @get("/partners")
    async def partners(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
    ) -> Template:
        records = await registry.list_partners(services.engine)
        return render("partners.html", session, request, partners=records)

    @get("/partners/{partner_id:str}")
    async def partner(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
    ) -> Template:
        record = await registry.get_partner(services.engine, partner_id)
        return render("partner.html", session, request, partner=record)
