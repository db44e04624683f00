"""Lean routes: the hottest endpoints dispatched without Litestar's per-request machinery.

Earn, burn and the balance read are most of a coalition's traffic. For them Litestar's
routing, its dependency resolution (a kwargs model, a signature model that re-validates
what the handler already declares) and its exception middleware were about a sixth of a
worker's CPU (docs/performance.md, "Eleventh round"). `LeanRoutes` sits just inside
`RequestContext` and, for exactly these three method-and-path pairs, does what Litestar
would do with the same objects: it sets the scope keys Litestar's router sets
(`route_handler`, `path_params`, `path_template`), builds the same `Request`, calls the
same dependency functions (`partner_caller`, `member_or_partner_caller`) and the same
handler function, turns its return value into a response with the same route handler's
`to_response`, and maps an exception with the same `exception_handlers()` table. The
contract, the order of the checks, every error and the OpenAPI document (which still
comes from the registered controllers) are the controllers'.

Anything else goes to Litestar unchanged, including every request these routes would
not take exactly as spelled: another method, a trailing slash, a `root_path`, a host
header Litestar would refuse. So this layer can only ever answer what Litestar would
have answered the same way, and the controllers stay the one place a route is defined.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Litestar, Request, Response
from litestar._asgi.utils import is_valid_host
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from exchange.members.auth import member_or_partner_caller
from exchange.problems import problem_for
from exchange.wiring import Services
from partners.auth import partner_caller

__all__ = ["LeanRoutes"]

# handler, request, services, path parameters -> the handler's return value
_Call = Callable[
    [HTTPRouteHandler, Request[Any, Any, Any], Services, dict[str, Any]], Awaitable[Any]
]

_BALANCE = re.compile(r"/v1/members/([^/]+)/balance")


async def _posting(
    handler: HTTPRouteHandler,
    request: Request[Any, Any, Any],
    services: Services,
    params: dict[str, Any],
) -> Any:
    partner = await partner_caller(request, services)
    return await handler.fn(request=request, partner=partner, services=services)


async def _balance(
    handler: HTTPRouteHandler,
    request: Request[Any, Any, Any],
    services: Services,
    params: dict[str, Any],
) -> Any:
    caller = await member_or_partner_caller(request, services)
    return await handler.fn(caller=caller, services=services, **params)


class LeanRoutes:
    """ASGI layer in front of Litestar's router for earn, burn and the balance (module)."""

    def __init__(self, app: Litestar, inner: Any) -> None:
        self.app = app
        self.inner = inner
        self._handlers: dict[tuple[str, str], tuple[HTTPRouteHandler, str]] = {}
        for route in app.routes:
            if isinstance(route, HTTPRoute):
                for method, (handler, _) in route.route_handler_map.items():
                    self._handlers[(method, route.path)] = (handler, route.path_format)
        self._earn = self._handlers[("POST", "/v1/earn")]
        self._burn = self._handlers[("POST", "/v1/burn")]
        self._read = self._handlers[("GET", "/v1/members/{member_id:str}/balance")]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("root_path") or not _plain_host(scope):
            await self.inner(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        params: dict[str, Any] = {}
        if method == "POST" and path == "/v1/earn":
            (handler, template), call = self._earn, _posting
        elif method == "POST" and path == "/v1/burn":
            (handler, template), call = self._burn, _posting
        elif method == "GET" and (found := _BALANCE.fullmatch(path)) is not None:
            (handler, template), call = self._read, _balance
            params["member_id"] = found[1]
        else:
            await self.inner(scope, receive, send)
            return
        scope["route_handler"] = handler
        scope["path_params"] = params
        scope["path_template"] = template
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        try:
            data = await call(handler, request, self.app.state.services, params)
            answer = _json_answer(handler, data)
            if answer is not None:
                await _send(send, *answer)
                return
            response = await handler.to_response(app=self.app, data=data, request=request)
        except Exception as exc:  # mapped as litestar's exception middleware would map it
            response = problem_for(request, exc).to_asgi_response(app=None, request=request)
        await response(scope, receive, send)


def _json_answer(
    handler: HTTPRouteHandler, data: Any
) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """Status, body and extra headers of a plain JSON answer, which is sent as litestar
    would send it (`content-type`, `content-length`, the response's own headers) without
    building its response objects: a handler's struct (encoded by msgspec, as litestar's
    serializer encodes it) or a `Response` of JSON bytes (a posting's stored answer).
    Anything else (None: cookies, a background task, another media type) goes through
    the route handler's `to_response`."""
    if isinstance(data, msgspec.Struct) and handler.status_code is not None:
        return handler.status_code, msgspec.json.encode(data), []
    if (
        type(data) is Response
        and isinstance(data.content, bytes)
        and data.media_type == "application/json"
        and not data.cookies
        and data.background is None
        and data.status_code is not None
    ):
        extra = [(name.lower().encode(), value.encode()) for name, value in data.headers.items()]
        return data.status_code, data.content, extra
    return None


async def _send(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body})


def _plain_host(scope: Any) -> bool:
    for name, value in scope["headers"]:
        if name == b"host":
            return is_valid_host(value)
    return True
