"""The console's forms: sign in and out, and the admin actions (onboard a partner, suspend
or activate it, add and revoke keys, run settlement). Every POST but sign-in checks the
session's CSRF token first; sign-in checks a double-submit token of its own, so no other
site can sign a browser in either. Each action calls the same registry and service
functions as the operator API and redirects (303) to the page that shows its result."""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from exchange.client_address import client_address
from exchange.console import sessions
from exchange.console._web import (
    PRE_COOKIE,
    SESSION_COOKIE,
    cookie,
    posted_form,
    render,
    require_admin,
)
from exchange.console.sessions import ConsoleSession
from exchange.errors import Forbidden, Unprocessable
from exchange.money import parse_price
from exchange.wiring import Services
from partners import registry
from settlement.service import SettlementService

__all__ = ["ConsoleActions"]

PRE_COOKIE_AGE_S = 3600
TOKEN_LENGTH_MAX = 256


def _sign_in_page(
    request: Request[Any, Any, Any], services: Services, *, error: str | None = None
) -> Template:
    pre = secrets.token_urlsafe(24)
    page = render(
        "sign_in.html",
        None,
        request,
        status_code=401 if error else 200,
        pre_token=pre,
        error=error,
    )
    page.cookies.append(cookie(services, PRE_COOKIE, pre, PRE_COOKIE_AGE_S))
    return page


def _spec(form: dict[str, str]) -> registry.PartnerSpec:
    currency = form.get("settlement_currency", "").strip().upper()
    rate = form.get("earn_rate", "").strip()
    return registry.PartnerSpec(
        partner_id=form.get("partner_id", "").strip(),
        name=form.get("name", "").strip(),
        settlement_currency=currency,
        issue_price=parse_price(form.get("issue_price", "").strip(), what="issue_price"),
        redemption_value=parse_price(
            form.get("redemption_value", "").strip(), what="redemption_value"
        ),
        earn_rates={currency: parse_price(rate, what="earn_rate")} if rate else {},
    )


def _period_end(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise Unprocessable("period_end must be a date and time like 2026-11-23T00:00Z.") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ConsoleActions(Controller):
    path = "/"

    @get("/sign-in")
    async def sign_in_page(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Template:
        return _sign_in_page(request, services)

    @post("/sign-in", status_code=303)
    async def sign_in(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[Any]:
        form = {key: str(value) for key, value in (await request.form()).items()}
        pre = request.cookies.get(PRE_COOKIE, "")
        if not pre or not hmac.compare_digest(form.get("csrf_token", ""), pre):
            raise Forbidden("The sign-in form expired or did not come from this site; reload it.")
        # Per client, as `exchange.client_address` decides it: behind a trusted proxy every
        # peer is the proxy, and one shared bucket would let one guesser lock everyone out.
        address = client_address(request.scope, services.settings.trusted_proxies)
        client = str(address) if address is not None else "unknown"
        await services.limiter.check("operator", f"console-sign-in:{client}")
        token = form.get("token", "").strip()[:TOKEN_LENGTH_MAX]
        started = await sessions.start_session(services.engine, services.clock, token)
        if started is None:
            return _sign_in_page(request, services, error="Unknown or revoked operator token.")
        identity, secret = started
        request.scope["state"]["caller_log"] = {"operator": identity.token_id, "console": "in"}
        max_age = int(sessions.SESSION_TTL.total_seconds())
        return Redirect(
            "/console",
            status_code=303,
            cookies=[
                cookie(services, SESSION_COOKIE, secret, max_age),
                cookie(services, PRE_COOKIE, "", 0),
            ],
        )

    @post("/sign-out", status_code=303)
    async def sign_out(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        await posted_form(request, session)
        await sessions.end_session(services.engine, request.cookies[SESSION_COOKIE])
        return Redirect(
            "/console/sign-in", status_code=303, cookies=[cookie(services, SESSION_COOKIE, "", 0)]
        )

    @post("/runs", status_code=303)
    async def run_settlement(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        settlement: NamedDependency[SettlementService],
    ) -> Response[Any]:
        form = await posted_form(request, session)
        require_admin(session)
        result = await settlement.run_settlement(
            _period_end(form.get("period_end", "")),
            created_by=f"operator:{session.identity.name}",
        )
        return Redirect(f"/console/runs/{result.run.run_id}", status_code=303)

    @post("/partners", status_code=303)
    async def onboard(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
    ) -> Response[Any]:
        form = await posted_form(request, session)
        require_admin(session)
        record = await registry.create_partner(
            services.engine, services.clock, _spec(form), changed_by=session.identity.name
        )
        return Redirect(f"/console/partners/{record.partner_id}", status_code=303)

    @post("/partners/{partner_id:str}/status", status_code=303)
    async def set_status(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
    ) -> Response[Any]:
        form = await posted_form(request, session)
        require_admin(session)
        statuses: dict[str, registry.PartnerStatus] = {"active": "active", "suspended": "suspended"}
        status = statuses.get(form.get("status", ""))
        if status is None:
            raise Unprocessable("status must be active or suspended.")
        changes = registry.PartnerChanges(status=status)
        await registry.update_partner(
            services.engine, services.clock, partner_id, changes, changed_by=session.identity.name
        )
        services.gateway.forget_keys()  # this process at once; the others by NOTIFY
        return Redirect(f"/console/partners/{partner_id}", status_code=303)

    @post("/partners/{partner_id:str}/keys", status_code=303)
    async def add_key(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
    ) -> Response[Any]:
        form = await posted_form(request, session)
        require_admin(session)
        await registry.add_key(
            services.engine, services.clock, partner_id, form.get("public_key", "").strip()
        )
        return Redirect(f"/console/partners/{partner_id}", status_code=303)

    @post("/partners/{partner_id:str}/keys/{key_id:str}/revoke", status_code=303)
    async def revoke_key(
        self,
        request: Request[Any, Any, Any],
        session: NamedDependency[ConsoleSession],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
        key_id: FromPath[str],
    ) -> Response[Any]:
        await posted_form(request, session)
        require_admin(session)
        await registry.revoke_key(services.engine, services.clock, partner_id, key_id)
        services.gateway.forget_keys()
        return Redirect(f"/console/partners/{partner_id}", status_code=303)
