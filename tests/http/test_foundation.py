"""Health, readiness, and RFC 9457 problem responses for every kind of error."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
from litestar import Litestar, Request, post

from exchange.app import create_app
from exchange.config import Settings
from exchange.embedded import EmbeddedPostgres
from tests.conftest import PUBLIC_URL, running


def _http(app: Litestar) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL)


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.headers["x-request-id"]


async def test_ready_is_503_when_the_database_is_not_migrated(postgres: EmbeddedPostgres) -> None:
    name = f"bare_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres.url("postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        app = create_app(Settings(database_url=postgres.url(name), scheduler_enabled=False))
        async with running(app), _http(app) as client:
            response = await client.get("/ready")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "service_unavailable"
        assert "exchange migrate" in response.json()["detail"]
    finally:
        admin = await asyncpg.connect(postgres.url("postgres"))
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_unknown_route_is_a_problem_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "https://errors.coalition.example/not_found"
    assert body["code"] == "not_found"
    assert body["status"] == 404
    assert body["request_id"] == response.headers["x-request-id"]


async def test_wrong_method_is_a_problem_405(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


async def test_request_id_is_echoed_when_given(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-Id": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"


async def test_oversized_body_is_413_and_crash_is_a_bare_500(app: Litestar) -> None:
    @post("/test/echo-size")
    async def echo_size(request: Request[Any, Any, Any]) -> dict[str, int]:
        return {"size": len(await request.body())}

    @post("/test/crash")
    async def crash() -> None:
        raise RuntimeError("SELECT secret FROM internals")

    app.register(echo_size)
    app.register(crash)
    async with running(app), _http(app) as client:
        small = await client.post("/test/echo-size", content=b"x" * 65536)
        assert small.status_code == 201
        big = await client.post("/test/echo-size", content=b"x" * 65537)
        assert big.status_code == 413
        assert big.json()["code"] == "payload_too_large"
        crashed = await client.post("/test/crash")
    assert crashed.status_code == 500
    assert crashed.headers["content-type"] == "application/problem+json"
    assert crashed.json()["code"] == "internal_error"
    assert "SELECT" not in crashed.text
    assert "Traceback" not in crashed.text


async def test_openapi_document_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")
