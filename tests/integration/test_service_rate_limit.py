"""The documented per-token limit holds for the whole service, not per worker process.

Before: each of `exchange serve --workers N` processes enforced the whole limit on its
own, so an operator token (or a partner key) got up to N times the limit.
"""

from __future__ import annotations

import asyncio
import subprocess

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.operators import create_operator_token
from tests.servers import EXCHANGE, free_port, server_env, wait_ready

LIMIT = 6


def _flood(database_url: str, token: str) -> list[int]:
    """Serve with two workers and send 4x the limit, each on a new connection (so the
    requests spread over both workers); the statuses in order."""
    port = free_port()
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port), "--workers", "2"],
        env=server_env(
            EXCHANGE_DATABASE_URL=database_url,
            EXCHANGE_OPERATOR_RATE_LIMIT=f"{LIMIT}/hour",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, process, timeout_s=60)
        statuses = []
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(4 * LIMIT):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                statuses.append(http.get("/v1/admin/partners", headers=headers).status_code)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return statuses


async def test_with_two_workers_a_token_gets_the_documented_limit_in_total(
    engine: AsyncEngine, database_url: str
) -> None:
    _, token = await create_operator_token(engine, "admin", "flood")
    statuses = await asyncio.to_thread(_flood, database_url, token)
    assert set(statuses) == {200, 429}
    assert statuses.count(200) <= LIMIT, statuses
