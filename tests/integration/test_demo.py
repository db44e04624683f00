"""`exchange demo` end to end: real server, real signed HTTP, settlement, verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from exchange.embedded import EmbeddedPostgres


def _demo(data_dir: Path, database_url: str, seed: int) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    env |= {"EXCHANGE_DATABASE_URL": database_url, "EXCHANGE_DATA_DIR": str(data_dir),
            "COLUMNS": "120"}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "exchange", "demo", "--members", "20", "--days", "1",
         "--seed", str(seed)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _assert_the_server_log_went_to_its_file(
    demo: subprocess.CompletedProcess[str], data_dir: Path
) -> None:
    """The terminal tells the demo's story; the server's log goes to the file it names."""
    output = demo.stdout.splitlines() + demo.stderr.splitlines()
    assert [line for line in output if line.lstrip().startswith("{")] == []
    log_file = data_dir.resolve() / "demo" / "server.log"
    assert f"Server log: {log_file}" in demo.stdout
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(entry.get("event") == "request" for entry in logged), logged[:3]


async def _closing(connection: asyncpg.Connection) -> tuple[str, str, list[str]]:
    run_id, approved_by = await connection.fetchrow(
        "SELECT run_id, approved_by FROM settlement_approvals"
    )
    numbers = await connection.fetch("SELECT number FROM settlement_documents ORDER BY number")
    return run_id, approved_by, [row["number"] for row in numbers]


def _assert_the_demo_ends_with_the_closed_month(
    stdout: str, run_id: str, approved_by: str, numbers: list[str]
) -> None:
    """The run approved by a finance token, every document it issued, the roll-forward."""
    assert approved_by == "finance:demo-finance"
    assert f"Run {run_id} approved by {approved_by}" in stdout
    tail = stdout[stdout.index(f"Run {run_id} approved") :]
    assert "Documents issued at approval" in tail
    assert len(numbers) == 3  # one per partner with a non-zero net
    assert all(number in tail for number in numbers)
    assert "Liability roll-forward to" in tail
    forward = tail[tail.index("Liability roll-forward to") :]
    assert all(partner in forward for partner in ("grocer", "fuel", "cinema"))
    assert "Roll-forward ties to the run: yes" in forward


async def test_the_demo_settles_reconciled_and_verifies_clean_and_repeats_exactly(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    # The demo recreates database `exchange_demo` on the server it is pointed at.
    server_url = postgres.url("postgres")
    first = _demo(tmp_path, server_url, seed=7)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "reconciled" in first.stdout
    assert "Ledger verify: clean" in first.stdout
    _assert_the_server_log_went_to_its_file(first, tmp_path)
    # The members chapter: a tier change, a transfer and an expiry reminder.
    assert "base (4900 points) -> silver (5020)" in first.stdout
    assert "Ana -> Ben: 300 points" in first.stdout
    assert "member.points_expiring" in first.stdout
    csv_files = list((tmp_path / "demo").glob("settlement-*.csv"))
    assert len(csv_files) == 1
    first_csv = csv_files[0].read_text()
    rows = first_csv.splitlines()
    assert rows[0].startswith("run_id,period_start,period_end,reconciled,partner_id")
    assert {row.split(",")[4] for row in rows[1:]} == {"grocer", "fuel", "cinema"}
    assert all(row.split(",")[3] == "true" for row in rows[1:])

    connection = await asyncpg.connect(postgres.url("exchange_demo"))
    try:
        assert await connection.fetchval("SELECT bool_and(reconciled) FROM settlement_runs")
        earns = await connection.fetchval("SELECT count(*) FROM postings WHERE type = 'earn'")
        assert earns >= 10
        closing = await _closing(connection)
    finally:
        await connection.close()
    _assert_the_demo_ends_with_the_closed_month(first.stdout, *closing)

    second = _demo(tmp_path, server_url, seed=7)
    assert second.returncode == 0, second.stdout + second.stderr
    assert csv_files[0].read_text() == first_csv, "same seed, same numbers"
