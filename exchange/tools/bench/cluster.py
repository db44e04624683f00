"""The system under test: a fresh embedded PostgreSQL and `exchange serve` in front of it.

PostgreSQL is durable, as in production (fsync and synchronous commit on), in a data folder
the bench owns. The server is the real command, a subprocess with its own environment:
the database URL, the public URL the bench signs for, quiet logs, no scheduler, and rate
limits high enough never to trigger. Other `EXCHANGE_*` settings in the caller's
environment (pool size, group commit size, ...) pass through, so the same bench measures a
tuned configuration.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from exchange.config import Settings
from exchange.db import migrate
from exchange.embedded import EmbeddedPostgres

__all__ = [
    "BENCH_CONTROLLED",
    "DatabaseCounters",
    "Server",
    "database_counters",
    "filesystem_of",
    "free_port",
    "postmaster_pid",
    "server_environment",
    "start_postgres",
    "start_server",
]

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
GENEROUS_RATE_LIMIT = "1000000/second"
# Settings the bench decides; everything else EXCHANGE_* is inherited from the caller.
BENCH_CONTROLLED = frozenset(
    {
        "EXCHANGE_DATABASE_URL",
        "EXCHANGE_DATA_DIR",
        "EXCHANGE_PUBLIC_URL",
        "EXCHANGE_LOG_LEVEL",
        "EXCHANGE_SCHEDULER_ENABLED",
        "EXCHANGE_PARTNER_RATE_LIMIT",
        "EXCHANGE_OPERATOR_RATE_LIMIT",
        "EXCHANGE_MEMBER_RATE_LIMIT",
    }
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def filesystem_of(path: Path) -> str:
    """The filesystem type holding `path` (a tmpfs would make fsync free and the figures lie)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for partition in psutil.disk_partitions(all=True):
        mount = partition.mountpoint
        inside = resolved.startswith(mount.rstrip("/") + "/") or resolved == mount
        if inside and len(mount) > len(best):
            best, kind = mount, partition.fstype
    return kind


def start_postgres(
    data_dir: Path, *, max_connections: int, preload: tuple[str, ...] = ()
) -> EmbeddedPostgres:
    """Start a durable PostgreSQL in `data_dir` (which must be new or empty) and migrate it."""
    postgres = EmbeddedPostgres(
        data_dir, durable=True, max_connections=max_connections, preload=preload
    )
    postgres.start()
    try:
        migrate(postgres.url())
    except Exception:
        postgres.stop()
        raise
    return postgres


@dataclass(frozen=True, slots=True)
class DatabaseCounters:
    """Cluster-wide, exact: transaction ids assigned (one per writing transaction, each a
    durable commit) and WAL bytes written. Differences over a window, divided by the
    requests answered, say what one request costs the database."""

    xid: int
    wal_bytes: int


def database_counters(postgres: EmbeddedPostgres) -> DatabaseCounters:
    # pg_current_snapshot's xmax is the next xid; reading it assigns none. The LSN is exact.
    text = postgres.psql(
        "SELECT pg_snapshot_xmax(pg_current_snapshot()), "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
        "postgres",
    )
    xid, wal = text.strip().split("|")
    return DatabaseCounters(int(xid), int(wal))


def postmaster_pid(postgres: EmbeddedPostgres) -> int:
    return int((postgres.pgdata / "postmaster.pid").read_text().splitlines()[0])


def server_environment(database_url: str, port: int) -> dict[str, str]:
    """The server's environment: the caller's, with the settings the bench controls set.

    Raises ConfigError when an inherited EXCHANGE_* value is invalid.
    """
    env = {key: value for key, value in os.environ.items() if key not in BENCH_CONTROLLED}
    env |= {
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "EXCHANGE_LOG_LEVEL": "WARNING",
        "EXCHANGE_SCHEDULER_ENABLED": "false",
        "EXCHANGE_PARTNER_RATE_LIMIT": GENEROUS_RATE_LIMIT,
        "EXCHANGE_OPERATOR_RATE_LIMIT": GENEROUS_RATE_LIMIT,
        "EXCHANGE_MEMBER_RATE_LIMIT": GENEROUS_RATE_LIMIT,
    }
    Settings.from_env(env)  # fail here, with the variable named, not in a worker
    return env


@dataclass
class Server:
    """A running `exchange serve` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    workers: int
    log_path: Path
    settings: Settings

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The processes serving requests: uvicorn's or granian's (both spawned; a forked
        worker would carry the server's own command line) workers, or the server itself
        with one."""
        try:
            server = psutil.Process(self.process.pid)
            children = server.children()
            command = server.cmdline()
        except psutil.Error:
            return []
        spawned = [child.pid for child in children if _is_worker(child, command)]
        return spawned or [self.process.pid]

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not left within STOP_TIMEOUT_S."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def _is_worker(process: psutil.Process, server_command: list[str]) -> bool:
    try:
        command = process.cmdline()
    except psutil.Error:
        return False
    return "spawn_main" in " ".join(command) or command == server_command


def start_server(
    database_url: str, *, workers: int, log_path: Path, http_server: str = "uvicorn"
) -> Server:
    """`exchange serve --workers N --port <free>`, waited for until /ready answers 200."""
    port = free_port()
    env = server_environment(database_url, port)
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and command
            [
                *(sys.executable, "-m", "exchange", "serve"),
                *("--workers", str(workers), "--port", str(port)),
                *("--server", http_server),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, workers, log_path, Settings.from_env(env))
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"exchange serve exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            ready = httpx.get(f"{server.base_url}/ready", timeout=1).status_code == 200
            if ready and len(server.worker_pids()) >= server.workers:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"exchange serve not ready within {READY_TIMEOUT_S} s:\n{server.log_tail()}")
