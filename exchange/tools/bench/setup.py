"""The population the scenarios run against, built fast and honestly (not timed).

- Partners and their keys go through the operator API (`POST /v1/admin/partners`,
  `POST /v1/admin/partners/{id}/keys`) with an admin token made the way `exchange tokens
  create` makes one: a handful of calls, the real onboarding path.
- Members are inserted with bulk SQL: exactly the rows enrolment writes (`members` with
  `enrolled_by`, and the `member_links` row to the enrolling partner), minus the
  idempotency record an API call would leave. Member `i` is enrolled by partner `i % P`.
- Opening balances are real earns through `LedgerService.submit` (many `Earn`s per call,
  a SystemClock), so every posting, entry, lot and partner counter is the ledger's own.
  The hot members of the burn scenario get a balance big enough for the whole run.
  `lots` earns per member (`exchange bench --lots`, default 1) give each member that many
  open lots: a member who earns every day and seldom burns has hundreds, and a posting or
  a balance read loads every open lot of its member (docs/performance.md, "Fifteenth
  round").
- `exchange.verify.verify_ledger` must then come back clean: that is the proof.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import SystemClock
from exchange.config import Settings
from exchange.ids import new_member_id
from exchange.operators import create_operator_token
from exchange.service import Earn, LedgerRequest
from exchange.tools.bench.presign import Signer, Workload
from exchange.verify import VerifyReport, verify_ledger
from exchange.wiring import build_services
from partners.signing import generate_keypair

__all__ = [
    "HOT_MEMBERS",
    "HOT_MEMBER_POINTS",
    "OPENING_POINTS",
    "SetupReport",
    "build_population",
    "verify",
]

OPENING_POINTS = 1_000
HOT_MEMBERS = 10
HOT_MEMBER_POINTS = 1_000_000_000  # far more than burns of 1-5 points can use in any run
EARN_BATCH = 1_000
EARN_BATCHES_IN_FLIGHT = 4
INSERT_CHUNK = 20_000
ADMIN_TIMEOUT_S = 30.0

Progress = Callable[[str], None]


@dataclass
class SetupReport:
    partners: int = 0
    members: int = 0
    lots_per_member: int = 1
    opening_earns: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


async def _onboard(base_url: str, token: str, count: int) -> tuple[Signer, ...]:
    headers = {"Authorization": f"Bearer {token}"}
    signers: list[Signer] = []
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=ADMIN_TIMEOUT_S
    ) as api:
        for number in range(count):
            partner_id = f"bench-{number:03d}"
            created = await api.post(
                "/v1/admin/partners",
                json={
                    "partner_id": partner_id,
                    "name": f"Bench partner {number}",
                    "settlement_currency": "EUR",
                    "issue_price": "0.0120",
                    "redemption_value": "0.0100",
                    "earn_rates": {"EUR": "1"},
                },
            )
            _expect(created, 201, f"create partner {partner_id}")
            private_key, public_key = generate_keypair()
            key = await api.post(
                f"/v1/admin/partners/{partner_id}/keys", json={"public_key": public_key}
            )
            _expect(key, 201, f"register a key for {partner_id}")
            signers.append(Signer(partner_id, key.json()["key_id"], private_key))
    return tuple(signers)


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise RuntimeError(f"{what}: HTTP {response.status_code} {response.text[:300]}")


async def _insert_members(
    engine: AsyncEngine, members: Sequence[str], partners: Sequence[str]
) -> None:
    """The rows enrolment writes, in bulk: `members` and the link to the enrolling partner."""
    now = datetime.now(UTC)
    members_sql = text(
        "INSERT INTO members (member_id, enrolled_by, created_at) "
        "SELECT m, p, :now FROM unnest(CAST(:members AS varchar[]), CAST(:partners AS varchar[]))"
        " AS t(m, p)"
    )
    links_sql = text(
        "INSERT INTO member_links (member_id, partner_id, linked_at) "
        "SELECT m, p, :now FROM unnest(CAST(:members AS varchar[]), CAST(:partners AS varchar[]))"
        " AS t(m, p)"
    )
    for start in range(0, len(members), INSERT_CHUNK):
        chunk = list(members[start : start + INSERT_CHUNK])
        homes = [partners[(start + offset) % len(partners)] for offset in range(len(chunk))]
        async with engine.begin() as conn:
            params = {"members": chunk, "partners": homes, "now": now}
            await conn.execute(members_sql, params)
            await conn.execute(links_sql, params)


async def _opening_balances(
    engine: AsyncEngine, workload: Workload, hot: frozenset[str], lots: int, progress: Progress
) -> int:
    """`lots` earns per member from its enrolling partner, through the ledger, in big
    batches: round after round over the members, each earn a lot of its own."""
    ledger = build_services(Settings(), engine, SystemClock()).ledger
    total = len(workload.members) * lots

    def request(number: int) -> LedgerRequest:
        round_, index = divmod(number, len(workload.members))
        member_id = workload.members[index]
        first = round_ == 0
        return LedgerRequest(
            Earn(
                workload.signers[workload.home(index)].partner_id,
                member_id,
                f"bench-opening-{index}" if first else f"bench-opening-{index}-{round_}",
                points=HOT_MEMBER_POINTS if first and member_id in hot else OPENING_POINTS,
            )
        )

    gate = asyncio.Semaphore(EARN_BATCHES_IN_FLIGHT)
    done = 0

    async def submit(start: int) -> None:
        nonlocal done
        async with gate:  # built inside the gate: a million requests never sit in memory
            batch = [request(n) for n in range(start, min(start + EARN_BATCH, total))]
            outcomes = await ledger.submit(batch)
        refused = [outcome for outcome in outcomes if outcome.status_code != 201]
        if refused:
            raise RuntimeError(f"the ledger refused an opening earn: {refused[0]}")
        done += len(batch)
        if done % (EARN_BATCH * 20) == 0:
            progress(f"  opening balances: {done:,} / {total:,}")

    await asyncio.gather(*(submit(start) for start in range(0, total, EARN_BATCH)))
    return total


async def build_population(
    engine: AsyncEngine,
    base_url: str,
    authority: str,
    *,
    partners: int,
    members: int,
    progress: Progress,
    lots: int = 1,
) -> tuple[Workload, SetupReport]:
    """Partners with keys, members linked to them, opening balances; see the module doc."""
    report = SetupReport(partners=partners, members=members, lots_per_member=lots)
    started = time.perf_counter()
    _, token = await create_operator_token(engine, "admin", "bench")
    signers = await _onboard(base_url, token, partners)
    report.seconds["partners_and_keys"] = round(time.perf_counter() - started, 2)
    progress(f"  {partners} partners with keys via the operator API")

    started = time.perf_counter()
    member_ids = tuple(new_member_id() for _ in range(members))
    await _insert_members(engine, member_ids, [signer.partner_id for signer in signers])
    report.seconds["members"] = round(time.perf_counter() - started, 2)
    progress(f"  {members:,} members and links in {report.seconds['members']} s")

    hot = member_ids[: min(HOT_MEMBERS, members)]
    workload = Workload(authority, signers, member_ids, hot)
    started = time.perf_counter()
    report.opening_earns = await _opening_balances(engine, workload, frozenset(hot), lots, progress)
    report.seconds["opening_balances"] = round(time.perf_counter() - started, 2)
    progress(
        f"  {report.opening_earns:,} opening earns through LedgerService.submit "
        f"in {report.seconds['opening_balances']} s"
    )
    return workload, report


async def verify(engine: AsyncEngine) -> tuple[VerifyReport, float]:
    """verify_ledger over the whole database, and the seconds it took."""
    started = time.perf_counter()
    report = await verify_ledger(engine)
    return report, round(time.perf_counter() - started, 2)
