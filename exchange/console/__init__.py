"""The web console (contract §12): server-rendered pages under `/console` for finance
teams and operators, signed in with an operator token.

    pages.py      read pages (overview, runs, a run, statements, liabilities and their
                  roll-forward, partners)
    actions.py    forms: sign in/out, admin actions; each POST CSRF-checked
    finance.py    the close: approve a run, document PDFs, payments, receivables, adjustments
    _web.py       session dependency, CSRF, roles, navigation, template setup
    sessions.py   sign-in, sign-out, CSRF: sessions keyed by the hash of the cookie only
    _store.py     the session rows' SQL
    charts.py     SVG chart geometry and heat-map bins (pure)
    templates/    Jinja2, one base layout
    static/       vendored assets (CSS); nothing is built at install time
"""

from __future__ import annotations

from litestar import Router
from litestar.datastructures import ResponseHeader
from litestar.di import Provide
from litestar.static_files import create_static_files_router

from exchange.console._web import (
    STATIC_DIR,
    console_session,
    exception_handlers,
    template_config,
)
from exchange.console.actions import ConsoleActions
from exchange.console.finance import ConsoleFinance
from exchange.console.pages import ConsolePages

__all__ = ["router", "template_config"]

# Pages need no script at all, and styles come from our own file: the strictest policy fits.
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

router = Router(
    path="/console",
    route_handlers=[
        ConsolePages,
        ConsoleActions,
        ConsoleFinance,
        create_static_files_router(path="/static", directories=[STATIC_DIR], name="console-static"),
    ],
    dependencies={"session": Provide(console_session)},
    exception_handlers=exception_handlers(),
    response_headers=[
        ResponseHeader(name="Content-Security-Policy", value=_CSP),
        ResponseHeader(name="Cache-Control", value="no-store"),
        ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
        ResponseHeader(name="X-Frame-Options", value="DENY"),
        ResponseHeader(name="Referrer-Policy", value="same-origin"),
    ],
    include_in_schema=False,
)
