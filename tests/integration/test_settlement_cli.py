"""`exchange settle` and `exchange report ...` as finance runs them: real processes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.service import Burn, Earn, LedgerService
from tests.support import add_partner, enrol, post

EXCHANGE = [sys.executable, "-m", "exchange"]


def _exchange(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    env |= {
        "EXCHANGE_DATABASE_URL": database_url,
        "EXCHANGE_LOG_LEVEL": "WARNING",
        "EXCHANGE_LOG_FORMAT": "console",
        "COLUMNS": "160",
    }
    return subprocess.run(
        [*EXCHANGE, *args], env=env, capture_output=True, text=True, check=False, timeout=120
    )


async def test_settle_and_report_from_the_command_line(
    database_url: str,
    engine: AsyncEngine,
    clock: FrozenClock,
    ledger: LedgerService,
    tmp_path: Path,
) -> None:
    # The commands use the system clock: post in the past, three days ago.
    clock.set(datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "pub", currency="GBP", issue_price="0.011")
    member = await enrol(ledger, "grocer")
    await post(ledger, Earn("grocer", member, "o-1", points=10_000))
    await post(ledger, Burn("pub", member, 2_500))

    settled = _exchange(database_url, "settle", "--period-end", "2026-11-21T00:00:00Z")
    assert settled.returncode == 0, settled.stderr
    assert "stl_20261121T000000Z" in settled.stdout
    assert "reconciled" in settled.stdout
    assert "120.00" in settled.stdout

    again = _exchange(database_url, "settle", "--period-end", "2026-11-21T00:00:00Z")
    assert again.returncode == 0
    assert "already exists" in again.stdout

    closed = _exchange(database_url, "settle", "--period-end", "2026-11-20T00:00:00Z")
    assert closed.returncode != 0
    assert "period_closed" in closed.stderr

    as_json = _exchange(database_url, "report", "settlement", "latest", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    run = json.loads(as_json.stdout)
    assert run["run_id"] == "stl_20261121T000000Z"
    assert [(line["partner_id"], line["net"]) for line in run["lines"]] == [
        ("grocer", {"amount": "120.00", "currency": "EUR"}),
        ("pub", {"amount": "-25.00", "currency": "GBP"}),
    ]

    out = tmp_path / "run.csv"
    as_csv = _exchange(
        database_url, "report", "settlement", run["run_id"], "--format", "csv", "--out", str(out)
    )
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert [(row["partner_id"], row["currency"], row["net"]) for row in rows] == [
        ("grocer", "EUR", "120.00"),
        ("pub", "GBP", "-25.00"),
    ]

    table = _exchange(database_url, "report", "settlement", run["run_id"])
    assert table.returncode == 0
    assert "grocer" in table.stdout
    assert "receives" in table.stdout  # pub is paid by the operator

    liabilities = _exchange(database_url, "report", "liabilities", "--format", "json")
    assert liabilities.returncode == 0, liabilities.stderr
    report = json.loads(liabilities.stdout)
    assert [(p["partner_id"], p["outstanding_points"]) for p in report["partners"]] == [
        ("grocer", 7_500),
        ("pub", 0),
    ]
    assert _exchange(database_url, "report", "liabilities").returncode == 0

    missing = _exchange(database_url, "report", "settlement", "stl_nope")
    assert missing.returncode != 0
    assert "settlement_not_found" in missing.stderr
