"""Fault drills: a real `exchange serve` on a PostgreSQL of its own, which the tests break.

Each test module gets its own embedded PostgreSQL server (restarting it never disturbs
the session's shared server or other modules) and its own server process. Every wait is
bounded in time and every loop in count: a hang is a failure, never a stuck test run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange.clock import SystemClock
from exchange.db import create_engine
from exchange.embedded import EmbeddedPostgres
from exchange.operators import create_operator_token
from exchange.verify import verify_ledger
from partners import registry
from partners.signing import generate_keypair, load_private_key, sign_request
from tests.servers import EXCHANGE, free_port, server_env, wait_ready
from tests.support import add_partner

POOL_TIMEOUT_S = 1
# A 503 must come within the pool timeout; the margin is for a busy 2-core test machine.
ANSWER_S_MAX = POOL_TIMEOUT_S + 2.0
HEAL_S_MAX = 10.0  # "within a few seconds of the database returning"
REQUEST_TIMEOUT_S = 15.0  # far above ANSWER_S_MAX: a hang shows up as a slow answer
ALLOWED_WHILE_DOWN = {503}


@dataclass
class Answer:
    status: int
    code: str | None
    retry_after: str | None
    elapsed_s: float
    body: dict[str, Any]
    replayed: bool


@dataclass
class Exchange:
    """A running exchange, its PostgreSQL, and a partner key to sign requests with."""

    base_url: str
    pg: EmbeddedPostgres
    database_url: str
    log_path: Path
    key_id: str = ""
    private_key: str = ""
    member_id: str = ""
    admin_token: str = ""

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> Answer:
        """One signed request, no retries; a transport error or timeout fails the test."""
        content = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S) as http:
            request = http.build_request(method, path, content=content, headers=headers)
            request.headers.update(
                sign_request(
                    method=request.method,
                    url=request.url,
                    headers=request.headers,
                    body=content,
                    key_id=self.key_id,
                    private_key=load_private_key(self.private_key),
                )
            )
            started = time.monotonic()
            response = http.send(request)
            elapsed_s = time.monotonic() - started
        decoded = response.json() if response.content else {}
        return Answer(
            status=response.status_code,
            code=decoded.get("code") if isinstance(decoded, dict) else None,
            retry_after=response.headers.get("retry-after"),
            elapsed_s=elapsed_s,
            body=decoded if isinstance(decoded, dict) else {},
            replayed=response.headers.get("idempotency-replayed") == "true",
        )

    def ready(self) -> Answer:
        return self.get("/ready")

    def admin_get(self, path: str) -> Answer:
        """An operator's request: bearer token, SQLAlchemy paths (not the ledger's)."""
        return self.get(path, {"Authorization": f"Bearer {self.admin_token}"})

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        started = time.monotonic()
        response = httpx.get(
            f"{self.base_url}{path}", headers=headers or {}, timeout=REQUEST_TIMEOUT_S
        )
        decoded = response.json()
        problem = decoded if isinstance(decoded, dict) else {}
        return Answer(
            response.status_code,
            problem.get("code"),
            response.headers.get("retry-after"),
            time.monotonic() - started,
            problem,
            replayed=False,
        )

    def earn(self, points: int, key: str) -> Answer:
        body = {"member_id": self.member_id, "points": points, "reference": f"order-{key}"}
        return self.call("POST", "/v1/earn", body, key)

    def available(self) -> int:
        answer = self.call("GET", f"/v1/members/{self.member_id}/balance")
        assert answer.status == 200, answer
        points: int = answer.body["available"]
        return points

    def sql(self, statement: str) -> str:
        return self.pg.psql(statement, "postgres")

    def terminate_backends(self) -> None:
        self.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{self.pg.database}' AND pid <> pg_backend_pid()"
        )

    def listening(self) -> bool:
        """Whether the server's key-cache listener is connected (seen from PostgreSQL)."""
        found = self.sql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = '{self.pg.database}' AND query LIKE 'LISTEN%'"
        )
        return int(found.strip() or 0) > 0

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def assert_unavailable(answer: Answer) -> None:
    """What a client must see while the database is away: a prompt 503 it may retry."""
    assert answer.status == 503, answer
    assert answer.code == "service_unavailable", answer
    assert answer.retry_after is not None, answer
    assert int(answer.retry_after) >= 1, answer
    assert answer.elapsed_s < ANSWER_S_MAX, f"answered after {answer.elapsed_s:.1f} s"


def wait_until_healed(exchange: Exchange, key: str, points: int) -> tuple[Answer, float]:
    """Retry one earn (same Idempotency-Key) until it is answered 201; every answer on the
    way must be a prompt 503. Returns the 201 and how long healing took."""
    started = time.monotonic()
    for _ in range(200):
        answer = exchange.earn(points, key)
        if answer.status == 201:
            return answer, time.monotonic() - started
        assert_unavailable(answer)
        assert time.monotonic() - started < HEAL_S_MAX, "not healed in time"
        time.sleep(0.1)
    raise AssertionError("not healed within 200 attempts")


def ledger_report(database_url: str) -> tuple[list[Any], dict[str, int]]:
    async def run() -> tuple[list[Any], dict[str, int]]:
        engine = create_engine(database_url, pool_size=1)
        try:
            report = await verify_ledger(engine)
        finally:
            await engine.dispose()
        return list(report.discrepancies), dict(report.totals)

    return asyncio.run(run())


@dataclass
class Load:
    """Partners earning 1 point at a time, each earn retried with its own Idempotency-Key
    until it is answered 201, like an honest client through an outage."""

    exchange: Exchange
    workers: int = 3
    statuses: Counter[int] = field(default_factory=Counter)
    posted: int = 0
    stuck: list[str] = field(default_factory=list)
    slow: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._work) for _ in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self._threads), "load did not stop"

    def _work(self) -> None:
        for _ in range(1000):
            if self._stop.is_set():
                return
            self._earn_once(str(uuid.uuid4()))

    def _earn_once(self, key: str) -> None:
        deadline = time.monotonic() + 60
        for _ in range(600):
            try:
                answer = self.exchange.earn(1, key)
            except httpx.HTTPError as exc:  # recorded as a failure, never hidden
                answer = Answer(-1, type(exc).__name__, None, REQUEST_TIMEOUT_S, {}, False)
            with self._lock:
                self.statuses[answer.status] += 1
                if answer.status == 503 and answer.elapsed_s >= ANSWER_S_MAX:
                    self.slow.append(answer.elapsed_s)
                if answer.status == 201:
                    self.posted += 1
                    return
            if answer.status not in (503, 409) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        with self._lock:
            self.stuck.append(key)

    def check(self) -> None:
        assert self.stuck == [], f"earns that never succeeded: {self.stuck[:5]}"
        assert set(self.statuses) <= {201, 503, 409}, self.statuses
        assert self.slow == [], f"503s slower than {ANSWER_S_MAX} s: {self.slow}"
        assert self.posted > 0


def setup_partner(database_url: str) -> tuple[str, str, str]:
    async def run() -> tuple[str, str, str]:
        engine = create_engine(database_url, pool_size=1)
        clock = SystemClock()
        try:
            await add_partner(engine, clock, "grocer")
            private_key, public_key = generate_keypair()
            key = await registry.add_key(engine, clock, "grocer", public_key)
            _, token = await create_operator_token(engine, "admin", "drills")
        finally:
            await engine.dispose()
        return key.key_id, private_key, token

    return asyncio.run(run())


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """A real server on a PostgreSQL of this module's own, with a partner and a member."""
    folder = tmp_path_factory.mktemp("faults")
    # Durable: an immediate stop is a crash, and with synchronous_commit off (the test
    # session's setting) a crash loses commits already answered 201 (seen: 2 points).
    pg = EmbeddedPostgres(folder / "data", durable=True, max_connections=50)
    database_url = pg.start()
    port = free_port()
    log_path = folder / "server.log"
    env = server_env(
        EXCHANGE_DATABASE_URL=database_url,
        EXCHANGE_DB_POOL_TIMEOUT_S=str(POOL_TIMEOUT_S),
        EXCHANGE_DB_POOL_SIZE="6",
        EXCHANGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*EXCHANGE, "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
    try:
        wait_ready(port, server, timeout_s=60)
        exchange = Exchange(f"http://127.0.0.1:{port}", pg, database_url, log_path)
        exchange.key_id, exchange.private_key, exchange.admin_token = setup_partner(database_url)
        enrolled = exchange.call("POST", "/v1/members", {}, str(uuid.uuid4()))
        assert enrolled.status == 201, enrolled
        exchange.member_id = enrolled.body["member_id"]
        yield exchange
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        pg.stop()


def now_utc() -> datetime:
    return datetime.now(UTC)
