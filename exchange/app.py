"""`create_app()`: the HTTP application over the services `exchange.wiring` builds.

The lifespan builds this process's `Services` (`build_services`, the one composition
root), keeps them on `app.state`, and hands them to controllers and guards as litestar
dependencies: a handler declares `services: NamedDependency[Services]` or `settlement:
NamedDependency[SettlementService]`.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from exchange import console, metrics
from exchange.adjustments_http import AdjustmentController
from exchange.batches.http import BatchController
from exchange.batches.service import BatchService
from exchange.clock import Clock, SystemClock
from exchange.config import Settings
from exchange.db import create_engine
from exchange.health import HealthController
from exchange.http import BalanceController, MemberController, PartnerController
from exchange.lean import LeanRoutes
from exchange.logs import configure_logging
from exchange.members.http import MemberAdminController, MemberRightsController
from exchange.members.service import MembersService
from exchange.metrics_http import MetricsController
from exchange.middleware import RequestContext
from exchange.openapi import ContractRenderPlugin
from exchange.problems import exception_handlers
from exchange.service import AdjustmentService
from exchange.wiring import Services, build_services
from exchange.workers import exit_with_the_command
from partners.http import PartnerAdminController
from partners.webhooks.http import ExchangeKeyController, WebhookController
from partners.webhooks.service import WebhookService
from settlement.finance import FinanceService
from settlement.finance_http import FinanceController
from settlement.http import SettlementController
from settlement.service import SettlementService

__all__ = ["GC_YOUNG_THRESHOLD", "REQUEST_BODY_MAX_BYTES", "create_app", "create_served_app"]

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
            pool_size=settings.db_connections,
            pool_timeout_s=settings.db_pool_timeout_s,
            lock_timeout_s=settings.db_lock_timeout_s,
        )
        app.state.engine = engine
        metrics.instrument_engine(engine)
        services = build_services(settings, engine, the_clock)
        app.state.services = services
        app.state.scheduler = services.scheduler
        await services.start()
        try:
            yield
        finally:
            await services.stop()
            metrics.release_engine(engine)
            await engine.dispose()

    app = Litestar(
        route_handlers=[
            HealthController,
            PartnerController,
            BalanceController,
            MemberController,
            PartnerAdminController,
            SettlementController,
            FinanceController,
            AdjustmentController,
            BatchController,
            WebhookController,
            ExchangeKeyController,
            MetricsController,
            console.router,
            MemberRightsController,
            MemberAdminController,
        ],
        template_config=console.template_config(),
        lifespan=[lifespan],
        dependencies={
            "services": Provide(_services, sync_to_thread=False),
            "settlement": Provide(_settlement, sync_to_thread=False),
            "finance": Provide(_finance, sync_to_thread=False),
            "adjustments": Provide(_adjustments, sync_to_thread=False),
            "members": Provide(_members, sync_to_thread=False),
            "batches": Provide(_batches, sync_to_thread=False),
            "webhooks": Provide(_webhooks, sync_to_thread=False),
        },
        exception_handlers=exception_handlers(),
        request_max_body_size=REQUEST_BODY_MAX_BYTES,
        openapi_config=OpenAPIConfig(
            title="Coalition points exchange",
            version="1.0.0",
            path="/schema",
            render_plugins=[ContractRenderPlugin()],
        ),
        debug=False,
        logging_config=None,
    )
    # Outermost layer, so unrouted requests (404/405) get a request id and an access line too.
    app.asgi_handler = RequestContext(LeanRoutes(app, app.asgi_handler))
    return app


def _services(state: State) -> Services:
    services: Services = state.services
    return services


def _settlement(state: State) -> SettlementService:
    return _services(state).settlement


def _finance(state: State) -> FinanceService:
    return _services(state).finance


def _adjustments(state: State) -> AdjustmentService:
    return _services(state).adjustments


def _members(state: State) -> MembersService:
    return _services(state).members


def _batches(state: State) -> BatchService:
    return _services(state).batches


def _webhooks(state: State) -> WebhookService:
    return _services(state).webhooks


# The cyclic garbage collector's young generation is collected every 50,000 net
# allocations instead of every 700 (CPython's default). A posting batch keeps thousands of
# short-lived objects alive at once, so at the default the collector ran many times per
# batch, scanning the same live objects: 16% of a worker's samples under batch load
# (docs/performance.md, "Batches"). Objects are freed by reference counting as before; only
# cycles wait longer, and the worker's memory stays flat over the bench's soak.
GC_YOUNG_THRESHOLD = 50_000


def create_served_app() -> Litestar:
    """The app as `exchange serve` runs it, one per worker process. The worker owns its
    process, so it also tunes the garbage collector: what was imported and built at
    start-up is frozen out of every future collection (`gc.freeze`), and the young
    generation is collected less often. `create_app` alone (tests, embedding) leaves the
    host process's collector alone. A worker also ends with the `exchange serve` that
    started it (`exchange.workers`)."""
    exit_with_the_command()
    app = create_app()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    return app
