"""`exchange demo`: a week of coalition trading in under a minute, through the real API.

The demo starts the real application under uvicorn on a local port, against its own
fresh database `exchange_demo` on the embedded PostgreSQL (or the configured one), with
a clock that the demo moves forward, so days pass in seconds. Three partners are
onboarded through the operator API with freshly generated keys; every earn, burn,
hold, capture, void, return and refund is a signed HTTP request made with
`partners.client.AsyncPartnerClient`. Then settlement runs, and the statements, the
cross-brand matrix and the CSV report are shown; last, the month is closed as finance
would close it (`close_the_month`): the run approved with a finance operator's token, its
invoices and credit notes, and the liability roll-forward to its period_end. The same
seed gives the same numbers.
The server's log goes to a file (named at the end), not the terminal.

A tool: `exchange.cli` registers the command (`exchange.tools.demo_cli`) lazily and the
application never imports this module.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import httpx
import uvicorn
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from exchange.app import create_app
from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import create_engine, recreate_database
from exchange.logs import configure_logging
from exchange.members.reminders import write_expiry_reminders
from exchange.operators import create_operator_token
from partners.client import AsyncPartnerClient
from partners.errors import PartnerAPIError
from partners.signing import generate_keypair

__all__ = [
    "DEMO_DATABASE",
    "Closing",
    "DemoResult",
    "close_the_month",
    "members_chapter",
    "recreate_demo_database",
    "run_demo",
]

DEMO_DATABASE = "exchange_demo"
PARTNERS: tuple[dict[str, Any], ...] = (
    {"partner_id": "grocer", "name": "A Grocer", "settlement_currency": "EUR",
     "issue_price": "0.012", "redemption_value": "0.010", "earn_rates": {"EUR": "1"}},
    {"partner_id": "fuel", "name": "B Fuel", "settlement_currency": "EUR",
     "issue_price": "0.012", "redemption_value": "0.010", "earn_rates": {"EUR": "2"}},
    {"partner_id": "cinema", "name": "C Cinema", "settlement_currency": "EUR",
     "issue_price": "0.012", "redemption_value": "0.009"},
)  # fmt: skip


@dataclass(frozen=True)
class Closing:
    """The month closed through the operator API: the API's own answers."""

    approved: dict[str, Any]  # the run, status approved
    documents: list[dict[str, Any]]  # its invoices and credit notes
    roll_forward: dict[str, Any]  # GET /v1/reports/liabilities?as_of=<period_end>


@dataclass
class DemoResult:
    run: dict[str, Any]
    statements: dict[str, dict[str, Any]]
    csv_path: Path
    counts: Counter[str] = field(default_factory=Counter)
    closing: Closing | None = None


@dataclass
class _World:
    """What the simulated trading remembers: members and what can be returned later."""

    rng: random.Random
    clock: FrozenClock
    clients: dict[str, AsyncPartnerClient]
    members: list[str] = field(default_factory=list)
    earns: list[tuple[str, str, int]] = field(default_factory=list)  # partner, txn, points
    burns: list[tuple[str, str, int]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    available: Counter[str] = field(default_factory=Counter)  # as last reported per member

    def note(self, member: str, result: Any) -> None:
        """Remember the member's available points from a transaction's balance_after."""
        if result is not None and "balance_after" in result:
            self.available[member] = result["balance_after"]["available"]

    def can_spend(self, member: str, points: int) -> bool:
        """Members mostly spend what they have; now and then one tries anyway."""
        return self.available[member] >= points or self.rng.random() < 0.05

    async def attempt(self, what: str, call: Awaitable[Any]) -> Any:
        """Run one API call; count it, and count refusals by their error code."""
        try:
            result = await call
        except PartnerAPIError as error:
            self.counts[f"{what} refused ({error.code})"] += 1
            return None
        self.counts[what] += 1
        return result


def _write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _serve(
    settings: Settings, clock: FrozenClock, log: TextIO
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The real app on a real port, in this process (so the demo can move its clock)."""
    app = create_app(settings, clock=clock)
    # create_app points the logs at standard error; a demo's terminal tells its story, so
    # the server's access and client lines (thousands of JSON lines) go to `log` instead.
    configure_logging(settings.log_level, settings.log_format, stream=log)
    port = int(settings.public_url.rsplit(":", 1)[1])
    # proxy_headers off, as in `exchange serve`: the app alone decides who the client is.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, task


async def _onboard(
    admin: httpx.AsyncClient, settings: Settings, clock: FrozenClock
) -> dict[str, AsyncPartnerClient]:
    """Onboard the three partners through the operator API, each with a fresh key pair."""
    clients = {}
    for spec in PARTNERS:
        created = await admin.post("/v1/admin/partners", json=spec)
        created.raise_for_status()
        private_key, public_key = generate_keypair()
        key = await admin.post(
            f"/v1/admin/partners/{spec['partner_id']}/keys", json={"public_key": public_key}
        )
        key.raise_for_status()
        clients[spec["partner_id"]] = AsyncPartnerClient(
            settings.public_url,
            key.json()["key_id"],
            private_key,
            clock=lambda: clock.now().timestamp(),
            max_retries=2,
            backoff_s=0.01,
        )
    return clients


def _amount(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low * 100, high * 100)) / 100


async def _grocery(world: _World, member: str) -> None:
    amount = _amount(world.rng, 5, 150)
    reference = f"basket-{world.counts['grocery earn'] + 1}"
    result = await world.attempt(
        "grocery earn",
        world.clients["grocer"].earn(member, purchase=(amount, "EUR"), reference=reference),
    )
    if result is not None:
        world.note(member, result)
        world.earns.append(("grocer", result["transaction_id"], result["points"]))


async def _fuel(world: _World, member: str) -> None:
    amount = _amount(world.rng, 20, 90)
    reference = f"fill-{world.counts['fuel earn'] + 1}"
    result = await world.attempt(
        "fuel earn",
        world.clients["fuel"].earn(member, purchase=(amount, "EUR"), reference=reference),
    )
    if result is not None:
        world.note(member, result)
        world.earns.append(("fuel", result["transaction_id"], result["points"]))


async def _promotion(world: _World, member: str) -> None:
    expires = world.clock.now() + timedelta(days=3)
    promotion = world.clients["grocer"].earn(
        member, 50, reference="double-points-weekend", expires_at=expires
    )
    world.note(member, await world.attempt("promotional earn (3-day expiry)", promotion))


async def _cinema(world: _World, member: str) -> None:
    """A ticket paid with points: hold at the till, then capture in full or in part, or void."""
    client = world.clients["cinema"]
    price = world.rng.choice((150, 200, 300))
    if not world.can_spend(member, price):
        return
    hold = await world.attempt("cinema hold", client.create_hold(member, price))
    if hold is None:
        return
    roll = world.rng.random()
    if roll < 0.7:
        captured = await world.attempt(
            "hold captured in full", client.capture_hold(hold["hold_id"])
        )
        world.available[member] -= price
    elif roll < 0.85:
        half = price // 2
        captured = await world.attempt(
            "hold captured in part", client.capture_hold(hold["hold_id"], half)
        )
        world.available[member] -= half
    else:
        await world.attempt("hold voided", client.void_hold(hold["hold_id"]))
        return
    if captured is not None:
        world.burns.append(("cinema", captured["transaction_id"], captured["captured_points"]))


async def _pay_with_points(world: _World, member: str) -> None:
    partner = world.rng.choice(("grocer", "fuel"))
    points = world.rng.choice((100, 150, 250))
    if not world.can_spend(member, points):
        return
    result = await world.attempt(f"burn at {partner}", world.clients[partner].burn(member, points))
    world.note(member, result)
    if result is not None:
        world.burns.append((partner, result["transaction_id"], result["points"]))


async def _return(world: _World, _: str) -> None:
    if world.earns:
        partner, transaction, points = world.earns.pop(world.rng.randrange(len(world.earns)))
        part = max(1, points // world.rng.choice((1, 2, 4)))
        await world.attempt(
            "return (earn reversal)", world.clients[partner].reverse(transaction, part)
        )


async def _refund(world: _World, _: str) -> None:
    if world.burns:
        partner, transaction, points = world.burns.pop(world.rng.randrange(len(world.burns)))
        await world.attempt(
            "refund (burn reversal)", world.clients[partner].reverse(transaction, points)
        )


EVENTS: tuple[tuple[float, Callable[[_World, str], Awaitable[None]]], ...] = (
    (0.45, _grocery),
    (0.25, _fuel),
    (0.08, _promotion),
    (0.12, _cinema),
    (0.10, _pay_with_points),
    (0.04, _return),
    (0.02, _refund),
)


async def _trade_one_day(world: _World, day_start: datetime, progress: Progress, task: Any) -> None:
    """Each member shops a little; events are spread over the day in a seeded order."""
    events = []
    for member in world.members:
        for weight, event in EVENTS:
            if world.rng.random() < weight:
                events.append((world.rng.randrange(86_400), member, event))
    events.sort(key=lambda item: item[0])
    for second, member, event in events:
        world.clock.set(day_start + timedelta(seconds=second))
        await event(world, member)
        progress.advance(task)


async def _settle(admin: httpx.AsyncClient, world: _World, period_end: datetime) -> dict[str, Any]:
    world.clock.set(period_end + timedelta(minutes=5))
    response = await admin.post(
        "/v1/admin/settlements", json={"period_end": period_end.isoformat()}
    )
    response.raise_for_status()
    run: dict[str, Any] = response.json()
    return run


async def run_demo(
    settings: Settings,
    *,
    members: int,
    days: int,
    seed: int,
    out_dir: Path,
    console: Console,
    log: TextIO,
) -> DemoResult:
    """Run the whole demo against `settings.database_url` (a fresh database); the
    server's log goes to `log`."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=days)
    clock = FrozenClock(start)
    port = _free_port()
    settings = settings.with_changes(public_url=f"http://127.0.0.1:{port}", scheduler_enabled=False)
    server, serving = await _serve(settings, clock, log)
    try:
        return await _run(settings, clock, members=members, days=days, seed=seed, start=start,
                          out_dir=out_dir, console=console)  # fmt: skip
    finally:
        server.should_exit = True
        await serving


async def _run(
    settings: Settings,
    clock: FrozenClock,
    *,
    members: int,
    days: int,
    seed: int,
    start: datetime,
    out_dir: Path,
    console: Console,
) -> DemoResult:
    engine = create_engine(settings.database_url or "", pool_size=2)
    try:
        _, token = await create_operator_token(engine, "admin", "demo")
    finally:
        await engine.dispose()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=settings.public_url, headers=headers, timeout=30
    ) as admin:
        clients = await _onboard(admin, settings, clock)
        world = _World(random.Random(seed), clock, clients)
        try:
            with Progress(console=console, transient=False) as progress:
                enrolling = progress.add_task("enrolling members", total=members)
                for index in range(members):
                    partner = ("grocer", "fuel")[index % 2]
                    enrolled = await clients[partner].enrol_member(
                        reference=f"card-{index + 1:05d}"
                    )
                    world.members.append(enrolled["member_id"])
                    progress.advance(enrolling)
                trading = progress.add_task(f"trading for {days} days", total=None)
                for day in range(days):
                    await _trade_one_day(world, start + timedelta(days=day), progress, trading)
            run = await _settle(admin, world, start + timedelta(days=days))
            statements = {
                partner: dict(await client.statement(run["run_id"]))
                for partner, client in clients.items()
            }
            csv = await admin.get(f"/v1/settlements/{run['run_id']}/report.csv")
            csv.raise_for_status()
            await members_chapter(admin, clients, settings, clock, console)
        finally:
            for client in clients.values():
                await client.aclose()
    csv_path = out_dir / f"settlement-{run['run_id']}.csv"
    await asyncio.to_thread(_write_file, csv_path, csv.text)
    closing = await close_the_month(settings, run)
    return DemoResult(
        run=run, statements=statements, csv_path=csv_path, counts=world.counts, closing=closing
    )


async def close_the_month(settings: Settings, run: dict[str, Any]) -> Closing:
    """Approve the run as finance does (contract §8: a finance operator token), then read
    what approval issued and the liability roll-forward to the run's period_end."""
    engine = create_engine(settings.database_url or "", pool_size=1)
    try:
        _, token = await create_operator_token(engine, "finance", "demo-finance")
    finally:
        await engine.dispose()
    headers = {"Authorization": f"Bearer {token}"}
    run_id = run["run_id"]
    async with httpx.AsyncClient(
        base_url=settings.public_url, headers=headers, timeout=30
    ) as finance:
        approved = await finance.post(f"/v1/settlements/{run_id}/approval")
        approved.raise_for_status()
        documents = await finance.get(f"/v1/settlements/{run_id}/documents")
        documents.raise_for_status()
        forward = await finance.get("/v1/reports/liabilities", params={"as_of": run["period_end"]})
        forward.raise_for_status()
    return Closing(approved.json(), documents.json()["items"], forward.json())


async def members_chapter(
    admin: httpx.AsyncClient,
    clients: dict[str, AsyncPartnerClient],
    settings: Settings,
    clock: FrozenClock,
    console: Console,
) -> None:
    """Members v1.1 in three steps, after settlement (so the run above is unchanged): a
    tier change that a tier multiplier rewards, a transfer, and an expiry reminder."""
    grocer, fuel = clients["grocer"], clients["fuel"]
    changed = await admin.patch(
        "/v1/admin/partners/grocer", json={"tier_multipliers": {"silver": "1.5", "gold": "2"}}
    )
    changed.raise_for_status()
    table = Table(title="Members: tiers, a transfer, a reminder")
    table.add_column("step")
    table.add_column("what happened")
    ana = (await grocer.enrol_member(reference="demo-ana"))["member_id"]
    await grocer.earn(ana, 4_900, reference="demo-welcome")
    before = (await grocer.balance(ana))["tier"]
    first = await grocer.earn(ana, purchase=("120.00", "EUR"), reference="demo-basket-1")
    after = (await grocer.balance(ana))["tier"]
    second = await grocer.earn(ana, purchase=("120.00", "EUR"), reference="demo-basket-2")
    table.add_row(
        "tier",
        f"{before['name']} ({before['qualifying_points']} points) -> {after['name']} "
        f"({after['qualifying_points']}); 120 EUR earned {first['points']} points, then "
        f"{second['points']} at {after['name']} (x1.5)",
    )
    ben = (await fuel.enrol_member(reference="demo-ben"))["member_id"]
    token = (await grocer.create_session(ana))["token"]
    sent = await admin.post(
        f"/v1/members/{ana}/transfers",
        json={"to_member_id": ben, "points": 300},
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "demo-gift"},
    )
    sent.raise_for_status()
    moved = ", ".join(f"{lot['points']} of {lot['issuer']}'s" for lot in sent.json()["lots"])
    table.add_row("transfer", f"Ana -> Ben: 300 points ({moved}, expiry kept)")
    soon = clock.now() + timedelta(days=6)
    await fuel.earn(ben, 50, reference="demo-promo", expires_at=soon)
    engine = create_engine(settings.database_url or "", pool_size=2)
    try:
        written = await write_expiry_reminders(engine, clock.now(), settings.expiry_reminder_days)
    finally:
        await engine.dispose()
    windows = ", ".join(str(days) for days in settings.expiry_reminder_days)
    table.add_row(
        "reminder",
        f"the sweep wrote {written} member.points_expiring event(s) to the webhook outbox "
        f"(one per member, lot, window of {windows} days and linked partner), among them "
        f"Ben's 50 fuel points expiring {soon:%Y-%m-%d}",
    )
    console.print(table)


async def recreate_demo_database(url: str) -> str:
    """A fresh `exchange_demo` database on the server behind `url`; its URL."""
    return await recreate_database(url, DEMO_DATABASE)
