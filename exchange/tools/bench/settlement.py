"""`exchange bench settlement`: one settlement run over a million postings, against a
plain scan baseline.

    exchange bench settlement [--postings 1000000] [--members 100000] [--partners 20]
                              [--no-verify] [--explain]

Starts a throwaway embedded PostgreSQL, migrates it, and generates a consistent ledger
directly in SQL (earns with their lots, then burns drawing half of each of the first
lots, across many members and partners, with entries, allocations and partner counters
exactly as the posting rules would write them; `exchange verify`'s checks accept it).
Then it times, in the same database:

- the baseline: plain `count(*)` and `sum(...)` over postings, entries, allocations and
  lots (what merely reading the tables once costs);
- a settlement run over all of it (`SettlementService.run_settlement`: sweep, close,
  compute and store), and the measuring queries alone.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import click
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.db import create_engine, migrate
from exchange.embedded import EmbeddedPostgres
from exchange.verify import verify_ledger
from exchange.wiring import build_services
from settlement.engine import BEGINNING_OF_TIME, Period
from settlement.store import MEASURING_QUERIES, SETTLEMENT_WORK_MEM_MB, read_period

__all__ = ["SettlementBenchOptions", "run_settlement_bench"]

CHUNK = 100_000
PRICE = "0.012"
VALUE = "0.010"


@dataclass(frozen=True)
class SettlementBenchOptions:
    postings: int = 1_000_000
    members: int = 100_000
    partners: int = 20
    verify: bool = True
    explain: bool = False


# :lo/:hi select a chunk of earn (or burn) numbers; :n_members, :n_partners, :base, :step.
_EARN_SQL = (
    """
INSERT INTO postings (posting_id, type, member_id, partner_id, points, reference,
                      unit_price, currency, posted_at, recorded_at, available_at, expires_at)
SELECT md5('e' || i)::uuid, 'earn', 'm' || (i % :n_members), 'p' || (i % :n_partners),
       100 + i % 900, 'order-' || i, 0.012, 'EUR', :base + i * :step, :base + i * :step,
       :base + i * :step, :base + i * :step + interval '1095 days'
FROM generate_series(:lo, :hi) AS i""",
    """
INSERT INTO entries (posting_id, line, account, owner, amount, posted_at)
SELECT md5('e' || i)::uuid, x.line,
       CASE x.line WHEN 0 THEN 'issued' ELSE 'available' END,
       CASE x.line WHEN 0 THEN 'p' || (i % :n_partners) ELSE 'm' || (i % :n_members) END,
       CASE x.line WHEN 0 THEN -(100 + i % 900) ELSE 100 + i % 900 END,
       :base + i * :step
FROM generate_series(:lo, :hi) AS i CROSS JOIN (VALUES (0), (1)) AS x(line)""",
    """
INSERT INTO lots (lot_id, member_id, issuer_id, earn_id, initial, remaining, unit_price,
                  available_at, expires_at, matured, created_at)
SELECT md5('l' || i)::uuid, 'm' || (i % :n_members), 'p' || (i % :n_partners),
       md5('e' || i)::uuid, 100 + i % 900,
       100 + i % 900 - CASE WHEN i < :n_burns THEN (100 + i % 900) / 2 ELSE 0 END,
       0.012, :base + i * :step, :base + i * :step + interval '1095 days', true,
       :base + i * :step
FROM generate_series(:lo, :hi) AS i""",
)

# Burn j draws half of lot j (same member) after all earns, redeemed with a partner spread
# over all (issuer, redeemer) pairs.
_BURN_SQL = (
    """
INSERT INTO postings (posting_id, type, member_id, partner_id, points, reference,
                      unit_price, currency, posted_at, recorded_at)
SELECT md5('b' || j)::uuid, 'burn', 'm' || (j % :n_members),
       'p' || ((7 * j + j / :n_partners) % :n_partners), (100 + j % 900) / 2, 'burn-' || j,
       0.010, 'EUR', :burn_base + j * :step, :burn_base + j * :step
FROM generate_series(:lo, :hi) AS j""",
    """
INSERT INTO entries (posting_id, line, account, owner, amount, posted_at)
SELECT md5('b' || j)::uuid, x.line,
       CASE x.line WHEN 0 THEN 'available' ELSE 'redeemed' END,
       CASE x.line WHEN 0 THEN 'm' || (j % :n_members)
                   ELSE 'p' || ((7 * j + j / :n_partners) % :n_partners) END,
       CASE x.line WHEN 0 THEN -((100 + j % 900) / 2) ELSE (100 + j % 900) / 2 END,
       :burn_base + j * :step
FROM generate_series(:lo, :hi) AS j CROSS JOIN (VALUES (0), (1)) AS x(line)""",
    """
INSERT INTO allocations (posting_id, lot_id, kind, points)
SELECT md5('b' || j)::uuid, md5('l' || j)::uuid, 'draw', (100 + j % 900) / 2
FROM generate_series(:lo, :hi) AS j""",
)

_COUNTERS_SQL = """
INSERT INTO partner_counters (partner_id, shard, issued_value, liability_points, liability_value)
SELECT p.partner_id, 0,
       coalesce((SELECT sum(points * unit_price) FROM postings
                 WHERE type = 'earn' AND partner_id = p.partner_id), 0),
       coalesce((SELECT sum(remaining) FROM lots WHERE issuer_id = p.partner_id), 0),
       coalesce((SELECT sum(remaining * unit_price) FROM lots WHERE issuer_id = p.partner_id), 0)
FROM partners p"""

_BASELINE_SQL = (
    "SELECT count(*), sum(points) FROM postings",
    "SELECT count(*), sum(amount) FROM entries",
    "SELECT count(*), sum(points) FROM allocations",
    "SELECT count(*), sum(remaining) FROM lots",
)


def _typed(sql: str) -> str:
    """Give asyncpg the parameters' types: each is used in several expressions."""
    return (
        sql.replace(":burn_base", "CAST(:burn_base AS timestamptz)")
        .replace(":base", "CAST(:base AS timestamptz)")
        .replace(":step", "CAST(:step AS interval)")
        .replace(":lo", "CAST(:lo AS integer)")
        .replace(":hi", "CAST(:hi AS integer)")
        .replace(":n_members", "CAST(:n_members AS integer)")
        .replace(":n_partners", "CAST(:n_partners AS integer)")
        .replace(":n_burns", "CAST(:n_burns AS integer)")
    )


async def _generate(engine: AsyncEngine, args: SettlementBenchOptions, now: datetime) -> None:
    n_burns = args.postings * 2 // 5
    n_earns = args.postings - n_burns
    base = now - timedelta(days=40)
    step = timedelta(days=15) / max(n_earns, n_burns)
    params = {
        "n_members": args.members,
        "n_partners": args.partners,
        "n_burns": n_burns,
        "base": base,
        "burn_base": base + timedelta(days=16),
        "step": step,
    }
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO partners (partner_id, name, settlement_currency, terms_version,"
                " issue_price, redemption_value, created_at, updated_at)"
                " SELECT 'p' || k, 'Partner ' || k, 'EUR', 1, :price, :value, :at, :at"
                " FROM generate_series(0, :n - 1) AS k"
            ),
            {
                "n": args.partners,
                "at": base - timedelta(days=1),
                "price": Decimal(PRICE),
                "value": Decimal(VALUE),
            },
        )
        await conn.execute(
            text(
                "INSERT INTO members (member_id, created_at)"
                " SELECT 'm' || k, :at FROM generate_series(0, :n - 1) AS k"
            ),
            {"n": args.members, "at": base - timedelta(days=1)},
        )
    for sqls, count in ((_EARN_SQL, n_earns), (_BURN_SQL, n_burns)):
        for lo in range(0, count, CHUNK):
            chunk = {**params, "lo": lo, "hi": min(lo + CHUNK, count) - 1}
            async with engine.begin() as conn:
                for sql in sqls:
                    await conn.execute(text(_typed(sql)), chunk)
    async with engine.begin() as conn:
        await conn.execute(text(_COUNTERS_SQL))


async def _vacuum(engine: AsyncEngine) -> None:
    async with engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))


async def _baseline(engine: AsyncEngine) -> float:
    started = time.perf_counter()
    async with engine.connect() as conn:
        for sql in _BASELINE_SQL:
            await conn.execute(text(sql))
    return time.perf_counter() - started


async def _explain(engine: AsyncEngine, period: Period) -> None:
    """EXPLAIN ANALYZE each measuring query: where a run spends its time."""
    bounds = {"start": period.start, "end": period.end}
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text(f"SET LOCAL work_mem = '{SETTLEMENT_WORK_MEM_MB}MB'"))
        for name, sql in MEASURING_QUERIES.items():
            rows = await conn.execute(text("EXPLAIN (ANALYZE, COSTS OFF) " + sql), bounds)
            click.echo(f"-- {name}")
            click.echo("\n".join(row[0] for row in rows))


async def _bench(args: SettlementBenchOptions, url: str) -> None:
    engine = create_engine(url, pool_size=4)
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FrozenClock(now)
    try:
        started = time.perf_counter()
        await _generate(engine, args, now)
        await _vacuum(engine)
        click.echo(f"generated in {time.perf_counter() - started:.1f} s")
        async with engine.connect() as conn:
            counts = {
                table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()  # noqa: S608
                for table in ("postings", "entries", "lots", "allocations", "members")
            }
        click.echo("rows: " + ", ".join(f"{table} {count:,}" for table, count in counts.items()))
        if args.verify:
            started = time.perf_counter()
            report = await verify_ledger(engine)
            click.echo(
                f"exchange verify: {'clean' if report.clean else report.discrepancies[:3]}"
                f" ({time.perf_counter() - started:.1f} s)"
            )
        baseline = [await _baseline(engine) for _ in range(2)]
        click.echo(
            f"baseline count(*)/sum over the 4 tables: {baseline[0]:.2f} s"
            f" (again {baseline[1]:.2f} s)"
        )

        service = build_services(Settings(database_url=url), engine, clock).settlement
        period_end = now - timedelta(seconds=1)
        started = time.perf_counter()
        result = await service.run_settlement(period_end, created_by="bench")
        elapsed = time.perf_counter() - started
        controls = result.run.header.controls
        click.echo(
            f"settlement run {result.run.run_id}: {elapsed:.2f} s"
            f" ({counts['postings'] / elapsed:,.0f} postings/s), reconciled"
            f" {result.run.header.reconciled}, {len(result.run.settlement.lines)} lines,"
            f" {len(result.run.settlement.cross_brand)} cross-brand pairs,"
            f" issued {controls.issued:,}, redeemed {controls.redeemed:,},"
            f" outstanding {controls.outstanding_end:,}"
        )
        async with engine.connect() as plain:
            conn = await plain.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                started = time.perf_counter()
                await read_period(conn, Period(BEGINNING_OF_TIME, period_end))
                measured = time.perf_counter() - started
        click.echo(
            f"measuring queries alone (warm): {measured:.2f} s;"
            f" run / baseline = {elapsed / baseline[1]:.1f}x"
        )
        if args.explain:
            await _explain(engine, Period(BEGINNING_OF_TIME, period_end))
    finally:
        await engine.dispose()


def run_settlement_bench(args: SettlementBenchOptions) -> None:
    """Generate the ledger in a throwaway embedded PostgreSQL, then time the run."""
    with tempfile.TemporaryDirectory(prefix="bench-settlement-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", durable=False, database="bench")
        url = server.start()
        try:
            migrate(url)
            asyncio.run(_bench(args, url))
        finally:
            server.stop()
