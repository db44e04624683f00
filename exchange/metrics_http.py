"""`GET /metrics`: the Prometheus text exposition (contract §12).

Open to loopback callers (a Prometheus agent on the same host); anyone else needs an
operator token (admin or finance). "Loopback" is the socket peer as uvicorn reports it:
uvicorn only trusts X-Forwarded-For from 127.0.0.1, so a client elsewhere cannot claim to
be local, and a request relayed by a local reverse proxy that sets X-Forwarded-For is
judged by the client it names, not by the proxy.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency

from exchange import metrics
from exchange.errors import Unauthorized
from exchange.openapi import api
from exchange.operators.auth import staff_caller
from exchange.wiring import Services

__all__ = ["MetricsController", "is_loopback"]


def is_loopback(request: Request[Any, Any, Any]) -> bool:
    client = request.scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except ValueError:  # a unix socket path or a name: not provably local
        return False


class MetricsController(Controller):
    path = "/metrics"
    tags = ["health"]

    @get(
        "/",
        summary="Prometheus metrics (loopback, or an operator token)",
        opt=api(
            media_types=("text/plain",),
            errors=(Unauthorized,),
            security=("operatorBearer", None),
        ),
    )
    async def scrape(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services]
    ) -> Response[bytes]:
        if not is_loopback(request):
            await staff_caller(request, services)
        return Response(content=metrics.render(), media_type=metrics.CONTENT_TYPE)
