"""`exchange serve --workers 2` spreads a burst of keep-alive connections over both
workers (exchange.serving.listener_per_worker).

Before, every uvicorn worker accepted from one shared socket, and the first to wake took
every connection waiting: a client that opens its pool at once (a partner's HTTP client,
a load balancer, the bench) had all of them served by one process, one core saturated
and the other idle, for as long as the connections lived.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import psutil

from exchange.embedded import EmbeddedPostgres
from tests.servers import EXCHANGE, free_port, server_env, wait_ready

CONNECTIONS = 24
BURSTS = 3
# Spread by a hash, each worker's share of 24 is binomial: 2 or fewer for either worker
# has a chance of 4e-5 per burst. One shared socket gave one worker nearly all of them.
SHARE_MIN = 3


@contextmanager
def _server(postgres: EmbeddedPostgres, tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """A two-worker uvicorn server on an external database: its port and worker pids."""
    postgres.ensure_database("connections_spread")
    port = free_port()
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port), "--workers", "2"],
        env=server_env(
            EXCHANGE_DATABASE_URL=postgres.url("connections_spread"),
            EXCHANGE_DATA_DIR=str(tmp_path),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, process, timeout_s=60)
        yield port, _listening(process.pid, port)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _listening(pid: int, port: int, timeout_s: float = 30) -> list[int]:
    """The command's two children that listen on the port: its workers (the first can
    answer /ready before the second listens)."""
    deadline = time.monotonic() + timeout_s
    while True:
        workers = [
            child.pid
            for child in psutil.Process(pid).children(recursive=True)
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in child.net_connections(kind="tcp")
            )
        ]
        if len(workers) == 2 or time.monotonic() > deadline:
            assert len(workers) == 2, workers
            return workers
        time.sleep(0.1)


def _held(pid: int, port: int) -> int:
    """Client connections to the port that this worker has accepted."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


def _burst(port: int, workers: list[int]) -> list[int]:
    """Open the connections together (all wait to be accepted at once), then send one
    request on each and read its answer; how many each worker holds meanwhile."""
    with ExitStack() as stack:
        clients = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(CONNECTIONS)
        ]
        request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        for client in clients:
            client.sendall(request)
        for client in clients:
            assert client.recv(65536).startswith(b"HTTP/1.1 200 ")
        return [_held(pid, port) for pid in workers]


def test_a_burst_of_connections_is_spread_over_both_workers(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    with _server(postgres, tmp_path) as (port, workers):
        shares = [_burst(port, workers) for _ in range(BURSTS)]
        # Each burst's connections, and only those, were held while it was measured.
        assert all(sum(share) == CONNECTIONS for share in shares), shares
        assert all(min(share) >= SHARE_MIN for share in shares), shares
        # The connections closed; the server still answers on fresh ones.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200


def test_a_port_already_served_stops_a_second_server(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """Workers' sockets share the port with each other, never with another server: a
    second `exchange serve --workers 2` on the same port exits instead of taking part of
    its connections."""
    with _server(postgres, tmp_path) as (port, _):
        second = subprocess.run(
            [*EXCHANGE, "serve", "--port", str(port), "--workers", "2"],
            env=server_env(
                EXCHANGE_DATABASE_URL=postgres.url("connections_spread"),
                EXCHANGE_DATA_DIR=str(tmp_path / "second"),
            ),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert second.returncode != 0
        assert b"address already in use" in second.stderr.lower()
