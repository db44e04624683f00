"""`GET /metrics`: the Prometheus text exposition (contract §12).

Open to loopback callers (a Prometheus agent on the same host); anyone else needs an
operator token (admin or finance). "Loopback" is the client as `exchange.client_address`
decides it, the same under granian and uvicorn: the socket peer, or behind a trusted
reverse proxy (`EXCHANGE_TRUSTED_PROXIES`) the client its `X-Forwarded-For` names, so a
request relayed by a proxy on the same host is judged by the client, not by the proxy,
and a client elsewhere cannot claim to be local in a header.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency

from exchange import metrics
from exchange.client_address import client_address, is_local
from exchange.errors import Unauthorized
from exchange.openapi import api
from exchange.operators.auth import staff_caller
from exchange.wiring import Services

__all__ = ["MetricsController", "is_loopback"]


def is_loopback(request: Request[Any, Any, Any], services: Services) -> bool:
    """Whether the calling client is on this host; unknown (a unix socket, a malformed
    `X-Forwarded-For`) is not provably local, so it is not."""
    return is_local(client_address(request.scope, services.settings.trusted_proxies))


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
        if not is_loopback(request, services):
            await staff_caller(request, services)
        return Response(content=metrics.render(), media_type=metrics.CONTENT_TYPE)
