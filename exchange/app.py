"""`create_app()`: the one composition root that knows every part of the exchange."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from exchange.clock import Clock, SystemClock
from exchange.config import Settings
from exchange.db import create_engine
from exchange.health import HealthController
from exchange.http import BalanceController, MemberController, PartnerController
from exchange.logs import configure_logging
from exchange.members.http import MemberAdminController, MemberRightsController
from exchange.members.reminders import expiry_reminder_job
from exchange.middleware import RequestContext
from exchange.problems import exception_handlers
from exchange.runtime import Services
from partners.gateway import housekeeping_jobs
from partners.http import PartnerAdminController
from settlement.http import SettlementController
from settlement.schedule import Scheduler
from settlement.service import SettlementService

__all__ = ["REQUEST_BODY_MAX_BYTES", "create_app"]

REQUEST_BODY_MAX_BYTES = 64 * 1024


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> Litestar:
    """Build the ASGI application. With no arguments (uvicorn's factory mode) the settings
    come from the environment; `exchange serve` has already resolved the database URL."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.database_url:
        raise RuntimeError("create_app needs settings.database_url (exchange serve sets it)")
    database_url = settings.database_url
    the_clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(
            database_url,
            pool_size=settings.db_pool_size,
            pool_timeout_s=settings.db_pool_timeout_s,
        )
        app.state.engine = engine
        services = Services.build(settings, engine, the_clock)
        app.state.services = services
        await services.start()
        scheduler = Scheduler(
            engine=engine,
            clock=the_clock,
            settlement=SettlementService(engine, the_clock, services.ledger),
            cycle=settings.settlement_cycle,
            interval_s=settings.scheduler_interval_s,
            housekeeping=[
                *housekeeping_jobs(engine),
                expiry_reminder_job(engine, settings.expiry_reminder_days),
            ],
        )
        app.state.scheduler = scheduler
        if settings.scheduler_enabled:
            scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()
            await services.stop()
            await engine.dispose()

    app = Litestar(
        route_handlers=[
            HealthController,
            PartnerController,
            BalanceController,
            MemberController,
            PartnerAdminController,
            SettlementController,
            MemberRightsController,
            MemberAdminController,
        ],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        request_max_body_size=REQUEST_BODY_MAX_BYTES,
        openapi_config=OpenAPIConfig(
            title="Coalition points exchange",
            version="1.0.0",
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
        ),
        debug=False,
        logging_config=None,
    )
    # Outermost layer, so unrouted requests (404/405) get a request id and an access line too.
    app.asgi_handler = RequestContext(app.asgi_handler)
    return app
