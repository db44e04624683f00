"""The batch scenario: one 1,000-item batch from each of (up to) 50 partners at once,
timed from the first upload to the last batch completed, as postings per second against
pgbench's tps of the same run (target: at least 3 x).

The end is the server's own `completed_at` of the last batch, not the moment a poll saw
it, so the figure does not depend on when the bench looks; the CPU figures end within
0.25 s of that moment (`_cpu_when_done`). Each partner polls its
batch's status as a patient partner would: after 1 s, then at doubling intervals up to
8 s. Polling every second measurably took from the machine being measured: 50 partners'
signed polls cost the bench's own process 8% of a core and the server some of its CPU
per posting (docs/performance.md, "Thirteenth round")."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import msgspec

from exchange.tools.bench.monitor import CpuReading, Monitor, cpu_ms_per_item
from exchange.tools.bench.presign import Signer, Workload
from partners.signing import load_private_key, sign_request

__all__ = ["BatchResult", "run_batch_scenario"]

BATCH_ITEMS = 1000
PARTNERS_MAX = 50
TIMEOUT_S = 900.0
POLL_FIRST_S = 1.0  # then doubled after each poll, up to POLL_MAX_S
POLL_MAX_S = 8.0
WATCH_S = 0.25  # how often the bench looks for the last batch's completion (locally)
_COMPLETED_SQL = "SELECT count(*) FROM batches WHERE status = 'completed' AND created_at >= $1"


@dataclass
class BatchResult:
    name: str
    batches: int
    items: int
    posted: int
    rejected: int
    seconds: float
    postings_per_s: float
    ratio_to_pgbench: float | None = None
    # CPU over the scenario, % of one core per group (server, postgres, other: everything
    # else on the machine), and milliseconds of it per posting.
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_posting: dict[str, float] = field(default_factory=dict)


def _signed(
    signer: Signer, base_url: str, method: str, path: str, body: bytes | None = None
) -> tuple[str, dict[str, str]]:
    url = f"{base_url}{path}"
    headers: dict[str, str] = {}
    if body:
        headers["Content-Type"] = "application/json"
    if method == "POST":
        headers["Idempotency-Key"] = str(uuid.uuid4())
    headers |= sign_request(
        method=method,
        url=url,
        headers=headers,
        body=body,
        key_id=signer.key_id,
        private_key=load_private_key(signer.private_key),
    )
    return url, headers


def _items(workload: Workload, partner: int, tag: str) -> list[dict[str, object]]:
    members = workload.members[partner :: len(workload.signers)] or workload.members[:1]
    return [
        {
            "item_id": f"bench-{tag}-{partner}-{n}",
            "type": "earn",
            "member_id": members[n % len(members)],
            "reference": f"batch-{tag}-{n}",
            "points": 1,
        }
        for n in range(BATCH_ITEMS)
    ]


async def _one(
    http: httpx.AsyncClient, base_url: str, signer: Signer, body: bytes
) -> dict[str, Any]:
    url, headers = _signed(signer, base_url, "POST", "/v1/batches", body)
    accepted = await http.post(url, content=body, headers=headers)
    if accepted.status_code != 202:
        raise RuntimeError(f"batch refused: {accepted.status_code} {accepted.text[:200]}")
    path = f"/v1/batches/{accepted.json()['batch_id']}"
    deadline = time.monotonic() + TIMEOUT_S
    wait_s = POLL_FIRST_S
    while time.monotonic() < deadline:
        await asyncio.sleep(wait_s)
        wait_s = min(2 * wait_s, POLL_MAX_S)
        url, headers = _signed(signer, base_url, "GET", path)
        status = (await http.get(url, headers=headers)).json()
        if status.get("status") == "completed":
            return {
                "posted": int(status["posted"]),
                "rejected": int(status["rejected"]),
                "completed_at": datetime.fromisoformat(status["completed_at"]),
            }
    raise RuntimeError(f"batch {path} not completed within {TIMEOUT_S} s")


async def _cpu_when_done(
    monitor: Monitor, database_url: str, started: datetime, batches: int
) -> CpuReading:
    """The CPU counters, read within WATCH_S of the last batch's completion: the CPU window
    ends there, not at the (backed-off) poll that sees it. The bench asks PostgreSQL
    directly, one small query every WATCH_S, which costs the machine far less than
    signed polls or reading every process's counters that often."""
    conn = await asyncpg.connect(database_url)
    try:
        while True:
            completed = await conn.fetchval(_COMPLETED_SQL, started)
            if completed >= batches:
                return monitor.read_cpu()
            await asyncio.sleep(WATCH_S)
    finally:
        await conn.close()


async def run_batch_scenario(
    base_url: str, database_url: str, workload: Workload, monitor: Monitor | None = None
) -> BatchResult:
    """Every partner (up to 50) uploads one batch at the same moment; wait for all."""
    tag = uuid.uuid4().hex[:8]
    signers = workload.signers[:PARTNERS_MAX]
    bodies = [msgspec.json.encode({"items": _items(workload, p, tag)}) for p in range(len(signers))]
    async with httpx.AsyncClient(timeout=60) as http:
        before = monitor.read_cpu() if monitor else None
        started = datetime.now(UTC)
        watch = (
            asyncio.create_task(_cpu_when_done(monitor, database_url, started, len(signers)))
            if monitor
            else None
        )
        try:
            done = await asyncio.gather(
                *(
                    _one(http, base_url, signer, body)
                    for signer, body in zip(signers, bodies, strict=True)
                )
            )
        except BaseException:
            if watch is not None:
                watch.cancel()
            raise
        end = await watch if watch is not None else None
    seconds = (max(d["completed_at"] for d in done) - started).total_seconds()
    window = Monitor.window(before, end) if before and end else None
    posted = sum(d["posted"] for d in done)
    return BatchResult(
        name="batches",
        batches=len(signers),
        items=len(signers) * BATCH_ITEMS,
        posted=posted,
        rejected=sum(d["rejected"] for d in done),
        seconds=round(seconds, 2),
        postings_per_s=round(posted / seconds, 1) if seconds else 0.0,
        cpu_percent=window.percent if window else {},
        cpu_ms_per_posting=cpu_ms_per_item(window, posted) if window else {},
    )
