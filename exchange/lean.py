"""Lean routes: the hottest endpoints dispatched without Litestar's per-request machinery.

Earn, burn and the balance read are most of a coalition's traffic. For them Litestar's
routing, its dependency resolution (a kwargs model, a signature model that re-validates
what the handler already declares), its exception middleware and its response objects
cost 0.14-0.19 ms of a request's 1-1.5 ms of server CPU (docs/performance.md, "Eleventh
round"). `LeanRoutes` sits just inside `RequestContext` and, for exactly these three
method-and-path pairs, does what Litestar would do with the same objects: it sets the
scope keys Litestar's router sets (`route_handler`, `path_params`, `path_template`),
builds the same `Request`, calls the same dependency functions (`partner_caller`,
`member_or_partner_caller`) and the same handler function, and maps an exception with
the same `exception_handlers()` table. A plain JSON answer (a handler's struct, a
posting's stored bytes) is sent as Litestar sends it, with its two headers and the
response's own; anything else goes through the same route handler's `to_response`. The
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
from litestar.types import Method

from exchange.members.auth import member_or_partner_caller
from exchange.problems import problem_for
from exchange.wiring import Services
from partners.auth import partner_caller

__all__ = ["LeanRoutes"]

# handler, request, services, path parameters -> the handler's return value
_Call = Callable[
    [HTTPRouteHandler, Request[Any, Any, Any], Services, dict[str, Any]], Awaitable[Any]
]

# a route handler, the router's path template, the call
_Route = tuple[HTTPRouteHandler, str, _Call]

# status, body, the response's own headers
_Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

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
        self._earn = _route(app, "POST", "/v1/earn", _posting)
        self._burn = _route(app, "POST", "/v1/burn", _posting)
        self._read = _route(app, "GET", "/v1/members/{member_id:str}/balance", _balance)

    def _match(self, scope: Any) -> tuple[_Route, dict[str, Any]] | None:
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == "/v1/earn":
            return self._earn, {}
        if method == "POST" and path == "/v1/burn":
            return self._burn, {}
        if method == "GET" and (found := _BALANCE.fullmatch(path)) is not None:
            return self._read, {"member_id": found[1]}
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        matched = self._match(scope)
        if matched is None or not _plain_host(scope):
            await self.inner(scope, receive, send)
            return
        (handler, template, call), params = matched
        scope["route_handler"] = handler
        scope["path_params"] = params
        scope["path_template"] = template
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        answer: _Answer | None = None
        response: Any = None
        try:
            data = await call(handler, request, self.app.state.services, params)
            answer = _json_answer(handler, data)
            if answer is None:
                response = await handler.to_response(app=self.app, data=data, request=request)
        except Exception as exc:  # mapped as litestar's exception middleware would map it
            response = problem_for(request, exc).to_asgi_response(app=None, request=request)
        # Sent outside the `try`, as litestar sends: a client gone mid-answer is not an
        # error of the request's to map.
        if answer is not None:
            await _send(send, *answer)
        else:
            await response(scope, receive, send)


def _route(app: Litestar, method: Method, path: str, call: _Call) -> _Route:
    """The registered handler of `method` at `path`, with the router's path template."""
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path == path:
            handler, _ = route.route_handler_map[method]
            return handler, route.path_format, call
    raise LookupError(f"no route {method} {path}")


def _json_answer(handler: HTTPRouteHandler, data: Any) -> _Answer | None:
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
