"""A batch survives its server being killed: after a restart every item is posted exactly
once (contract §9), and the ledger verifies clean."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.embedded import EmbeddedPostgres
from tests.faults.conftest import Exchange, ledger_report, setup_partner
from tests.servers import EXCHANGE, answers, free_port, server_env, wait_ready

ITEMS = 4000
MEMBERS = 20


class Server:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env, self.port, self.log_path = env, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*EXCHANGE, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: kill() reaches every worker
            )
        wait_ready(self.port, self.process, timeout_s=60)

    def kill(self) -> None:
        """A crash of the whole server: SIGKILL to each of its processes at once. granian
        serves from a worker process even with one worker; SIGKILL to the command alone
        left that worker posting the batch and answering on the port, so the restart
        below was no restart at all."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while answers(self.port):
            assert time.monotonic() < deadline, "a process of the killed server still answers"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def crashable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exchange, Server]]:
    folder = tmp_path_factory.mktemp("batch-crash")
    # Durable: SIGKILL is a crash, and a commit answered must survive it.
    pg = EmbeddedPostgres(folder / "data", durable=True, max_connections=50)
    database_url = pg.start()
    port = free_port()
    env = server_env(
        EXCHANGE_DATABASE_URL=database_url,
        EXCHANGE_DB_POOL_SIZE="6",
        EXCHANGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    server = Server(env, port, folder / "server.log")
    try:
        server.start()
        exchange = Exchange(f"http://127.0.0.1:{port}", pg, database_url, server.log_path)
        exchange.key_id, exchange.private_key, exchange.admin_token = setup_partner(database_url)
        enrolled = exchange.call("POST", "/v1/members", {}, str(uuid.uuid4()))
        assert enrolled.status == 201, enrolled
        exchange.member_id = enrolled.body["member_id"]
        yield exchange, server
    finally:
        server.stop()
        pg.stop()


def _enrol(exchange: Exchange) -> str:
    enrolled = exchange.call("POST", "/v1/members", {}, str(uuid.uuid4()))
    assert enrolled.status == 201, enrolled
    member_id: str = enrolled.body["member_id"]
    return member_id


def _total(exchange: Exchange, members: list[str]) -> int:
    total = 0
    for member_id in members:
        answer = exchange.call("GET", f"/v1/members/{member_id}/balance")
        assert answer.status == 200, answer
        total += int(answer.body["available"])
    return total


def _status(exchange: Exchange, batch_id: str) -> dict[str, object]:
    answer = exchange.call("GET", f"/v1/batches/{batch_id}")
    assert answer.status == 200, answer
    return answer.body


def test_a_batch_killed_mid_way_posts_every_item_exactly_once_after_restart(
    crashable: tuple[Exchange, Server],
) -> None:
    exchange, server = crashable
    members = [_enrol(exchange) for _ in range(MEMBERS)]
    items = [
        {"item_id": f"crash-{n}", "type": "earn", "member_id": members[n % MEMBERS],
         "reference": f"line-{n}", "points": 1}
        for n in range(ITEMS)
    ]  # fmt: skip
    accepted = exchange.call("POST", "/v1/batches", {"items": items}, str(uuid.uuid4()))
    assert accepted.status == 202, accepted
    batch_id = accepted.body["batch_id"]
    posted = 0
    for _ in range(600):
        posted = int(str(_status(exchange, batch_id)["posted"]))
        if posted >= 200:
            break
        time.sleep(0.02)
    server.kill()
    assert 0 < posted < ITEMS, f"not killed mid-way: {posted} of {ITEMS} posted"

    server.start()
    status: dict[str, object] = {}
    for _ in range(1200):
        status = _status(exchange, batch_id)
        if status["status"] == "completed":
            break
        time.sleep(0.1)
    assert status["status"] == "completed", status
    assert (status["posted"], status["rejected"]) == (ITEMS, 0)
    assert _total(exchange, members) == ITEMS
    transactions = set()
    after = 0
    while True:
        page = exchange.call("GET", f"/v1/batches/{batch_id}/results?after={after}&limit=1000")
        assert page.status == 200, page
        transactions |= {r["transaction_id"] for r in page.body["results"]}
        if "next" not in page.body:
            break
        after = int(page.body["next"])
    assert len(transactions) == ITEMS  # one posting per item, none twice
    discrepancies, _ = ledger_report(exchange.database_url)
    assert discrepancies == []

    # The same file again after the crash: every item gets its first result, nothing posts.
    again = exchange.call("POST", "/v1/batches", {"items": items}, str(uuid.uuid4()))
    assert again.status == 202, again
    for _ in range(1200):
        if _status(exchange, again.body["batch_id"])["status"] == "completed":
            break
        time.sleep(0.1)
    assert _total(exchange, members) == ITEMS
