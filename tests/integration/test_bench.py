"""`exchange bench` end to end, small: its own PostgreSQL, server, pgbench and load generator.

The full benchmark takes minutes; this smoke run (2 s per scenario, 200 members) checks the
harness itself: every scenario produced throughput over signed HTTP with no unexpected
errors, the load generator had enough requests, and the ledger verified before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.tools.bench.scenarios import SCENARIOS

SMOKE_TIMEOUT_S = 120  # a normal run takes 40-50 s; this only stops a hung one
BENCH = [sys.executable, "-m", "exchange", "bench"]


@pytest.mark.slow
def test_bench_smoke_run_measures_every_scenario_and_keeps_the_ledger_clean(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    result = subprocess.run(
        [
            *BENCH,
            *("--seconds", "2", "--clients", "4", "--members", "200", "--partners", "3"),
            *("--workers", "1", "--out", str(out), "--data-dir", str(tmp_path / "data")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["server"]["http_server"] == "uvicorn"  # the default, as `exchange serve`'s
    # The interpreter is named: figures compare only with the same one (report.interpreter).
    assert report["machine"]["interpreter"]["executable"] == os.path.realpath(sys.executable)
    assert report["machine"]["interpreter"]["libpython"] in {"shared", "static"}
    assert report["baseline"]["tps"] > 0
    assert report["baseline"]["latency_ms"]["p99"] > 0
    assert report["setup"]["verify_clean"] is True
    assert report["setup"]["totals"]["members"] == 200
    assert report["verify_after"]["clean"] is True
    assert set(report["scenarios"]) == {scenario.name for scenario in SCENARIOS}
    for name, scenario in report["scenarios"].items():
        assert scenario["ok_rps"] > 0, name
        assert scenario["errors"] == 0, (name, scenario["outcomes"])
        assert scenario["exhausted"] is False, name
        assert scenario["latency_ms"]["p99"] > 0, name
        assert scenario["cpu_percent"]["server"] > 0, name
        assert scenario["rss"]["max_mib"] > 0, name
    # The batch scenario: one 1,000-item batch per partner, every item posted once.
    assert report["batches"]["batches"] == 3
    assert report["batches"]["posted"] == 3000
    assert report["batches"]["rejected"] == 0
    assert report["batches"]["postings_per_s"] > 0
    assert report["statements"] == {}  # only with --statements
    targets = {target["name"] for target in report["targets"]}
    assert "ledger verifies after the run" in targets
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists(), "PostgreSQL was stopped"


def test_only_refuses_an_unknown_scenario_before_starting_anything() -> None:
    result = subprocess.run(
        [*BENCH, "--only", "batches,nope"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unknown scenario nope" in result.stderr
    assert "uniform_earn" in result.stderr  # the choices are named


@pytest.mark.slow
def test_only_batches_runs_the_batch_scenario_alone_against_its_pgbench_baseline(
    tmp_path: Path,
) -> None:
    """With --statements too: the batch scenario's own PostgreSQL statements are kept. With
    --lots 3, every member starts with three open lots (three opening earns each)."""
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    result = subprocess.run(
        [
            *BENCH,
            *("--only", "batches", "--seconds", "2", "--clients", "4", "--members", "200"),
            *("--partners", "2", "--workers", "1", "--out", str(out)),
            *("--data-dir", str(tmp_path / "data"), "--statements", "--lots", "3"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["baseline"]["tps"] > 0
    assert report["scenarios"] == {}
    setup = report["setup"]
    assert (setup["report"]["lots_per_member"], setup["report"]["opening_earns"]) == (3, 600)
    assert "200 members, 3 open lots each" in result.stdout
    batches = report["batches"]
    assert (batches["batches"], batches["posted"], batches["rejected"]) == (2, 2000, 0)
    assert batches["ratio_to_pgbench"] > 0
    assert batches["cpu_percent"]["server"] > 0
    assert batches["cpu_ms_per_posting"]["postgres"] > 0
    targets = {target["name"]: target for target in report["targets"]}
    assert targets["ledger verifies after the run"]["passed"] is True
    assert targets["batch postings vs pgbench tps"]["threshold"] == "≥ 3.0x"
    # pg_stat_statements, reset before the scenario: its writes, the postings' reference
    # check nested inside each (a statement trigger, migrations 0016, 0020 and 0022), and
    # nothing of the setup before it.
    statements = report["statements"]["batches"]
    queries = [(s["query"], s["toplevel"], s["calls"]) for s in statements]
    assert any(q.startswith("WITH new_postings AS (INSERT INTO postings") and top and calls >= 2
               for q, top, calls in queries), queries  # fmt: skip
    assert any(q.startswith("INSERT INTO batch_items") and calls == 2 for q, _, calls in queries)
    assert any(" o.reference, o.missing FROM (" in q
               and not top and calls >= 2 for q, top, calls in queries), queries  # fmt: skip
    assert not any(q.startswith("INSERT INTO members") for q, _, _ in queries), queries
    # Plannings are counted; asyncpg's catalog lookup of a type it has no codec for (its
    # `typeinfo_tree` query, ~8 ms to plan once per connection) is not among them.
    write = next(s for s in statements if s["query"].startswith("WITH new_postings AS"))
    assert 1 <= write["plans"] <= write["calls"], write
    assert write["plan_ms"] > 0, write
    assert not any("typeinfo_tree" in q for q, _, _ in queries), queries
    assert statements == sorted(statements, key=lambda s: -s["total_ms"])
    assert "top-level statements, share of their time" in result.stdout
