"""Console plumbing shared by every page: the session, CSRF, roles, navigation, rendering.

Adding a page: a handler in `pages.py` (or a new module) that calls `render()`, and one
`NavItem` below. Every POST handler starts with `posted_form()` (CSRF) and, for admin
actions, `require_admin()`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from exchange.console import sessions
from exchange.errors import ExchangeError, Forbidden
from exchange.wiring import Services

__all__ = [
    "NAV",
    "PRE_COOKIE",
    "SESSION_COOKIE",
    "STATIC_DIR",
    "NavItem",
    "NotSignedIn",
    "console_session",
    "cookie",
    "exception_handlers",
    "posted_form",
    "render",
    "require_admin",
    "template_config",
]


HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
SESSION_COOKIE = "exchange_console"
PRE_COOKIE = "exchange_console_signin"  # CSRF token of the sign-in form (double submit)
COOKIE_PATH = "/console"


@dataclass(frozen=True, slots=True)
class NavItem:
    label: str
    path: str
    roles: tuple[str, ...] = ("admin", "finance")


# One entry per page; finance and admin see the same reports, admin alone the admin forms.
NAV = (
    NavItem("Overview", "/console"),
    NavItem("Settlement runs", "/console/runs"),
    NavItem("Liabilities", "/console/liabilities"),
    NavItem("Receivables", "/console/receivables"),
    NavItem("Record payment", "/console/payments"),
    NavItem("Adjustments", "/console/adjustments"),
    NavItem("Partners", "/console/partners"),
)


class NotSignedIn(Exception):
    """No valid session: the console answers with the sign-in page."""


async def console_session(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> sessions.ConsoleSession:
    """A litestar dependency (built on the app's `services`): the signed-in operator, or a
    redirect to sign in."""
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        raise NotSignedIn
    session = await sessions.find_session(services.engine, services.clock, secret)
    if session is None:
        raise NotSignedIn
    identity = session.identity
    request.scope["state"]["caller_log"] = {"operator": identity.token_id, "role": identity.role}
    return session


def require_admin(session: sessions.ConsoleSession) -> None:
    if not session.is_admin:
        raise Forbidden(f"This needs the admin role; you are signed in as {session.identity.role}.")


async def posted_form(
    request: Request[Any, Any, Any], session: sessions.ConsoleSession
) -> dict[str, str]:
    """The form of a POST, after its CSRF token has been checked (403 otherwise)."""
    form = await request.form()
    values = {key: str(value) for key, value in form.items()}
    if not hmac.compare_digest(values.get("csrf_token", ""), session.csrf_token):
        raise Forbidden("The form's CSRF token is missing or wrong; reload the page and retry.")
    return values


def cookie(services: Services, key: str, value: str, max_age: int) -> Cookie:
    """A console cookie: this path only, HTTP-only, same-site strict, and Secure whenever
    the exchange is served over https."""
    return Cookie(
        key=key,
        value=value,
        path=COOKIE_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=services.settings.public_url.startswith("https://"),
    )


def render(
    template: str,
    session: sessions.ConsoleSession | None,
    request: Request[Any, Any, Any],
    *,
    status_code: int = 200,
    **context: Any,
) -> Template:
    role = session.identity.role if session else None
    nav = [item for item in NAV if role in item.roles]
    return Template(
        template_name=template,
        context={"session": session, "nav": nav, "path": request.url.path, **context},
        status_code=status_code,
    )


# -- errors -------------------------------------------------------------------------------------


def _not_signed_in(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    return Redirect("/console/sign-in", status_code=303)


def _error_page(request: Request[Any, Any, Any], exc: ExchangeError) -> Response[Any]:
    """The API's errors as a page: the same status, title and detail as its problem+json.
    A server error shows no detail (the log has it), as in `exchange.problems`."""
    detail = exc.detail if exc.status < 500 else "An internal error occurred."
    return render(
        "error.html",
        None,
        request,
        status_code=exc.status,
        title=exc.title,
        detail=detail,
        code=exc.code,
    )


def exception_handlers() -> dict[int | type[Exception], Any]:
    return {NotSignedIn: _not_signed_in, ExchangeError: _error_page}


# -- templates ------------------------------------------------------------------------------


def _points(value: int) -> str:
    return f"{value:,}"


def _when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC"


def _decimal(value: Decimal | None) -> str:
    return "" if value is None else f"{value.normalize():f}"


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(points=_points, when=_when, decimal=_decimal)
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))
