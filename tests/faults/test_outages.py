"""PostgreSQL goes away under a real server: 503 + Retry-After while it is away, never a
500 and never a hang; healed within seconds of its return, with no restart of the API;
and no point lost or doubled (every earn retried with its own Idempotency-Key)."""

from __future__ import annotations

import time
import uuid

from tests.faults.conftest import (
    HEAL_S_MAX,
    Exchange,
    Load,
    assert_unavailable,
    ledger_report,
    wait_until_healed,
)

PG_CTL_WAIT = ("-w", "-t", "60")


def _eventually(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    for _ in range(1000):
        if check():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return False


def _assert_books(exchange: Exchange, expected_available: int, key: str, points: int) -> None:
    """Every 201 counted once, the retried earn once, and the ledger balances."""
    assert exchange.available() == expected_available
    again = exchange.earn(points, key)
    assert again.status == 201, again
    assert again.replayed, "a retry after success is answered from the idempotency store"
    assert exchange.available() == expected_available
    discrepancies, _ = ledger_report(exchange.database_url)
    assert discrepancies == []
    assert "unhandled_exception" not in exchange.server_log()


def test_a_fast_restart_heals_without_a_single_500(exchange: Exchange) -> None:
    before, key = exchange.available(), str(uuid.uuid4())
    with Load(exchange) as load:
        time.sleep(0.5)
        exchange.pg.pg_ctl("restart", "-m", "fast", *PG_CTL_WAIT)
        _, heal_s = wait_until_healed(exchange, key, 5)
        time.sleep(0.5)  # the load runs on the healed server too
    load.check()
    assert heal_s < HEAL_S_MAX
    _assert_books(exchange, before + load.posted + 5, key, 5)


def test_while_the_database_is_stopped_every_request_is_a_prompt_503(exchange: Exchange) -> None:
    before, key = exchange.available(), str(uuid.uuid4())
    with Load(exchange) as load:
        time.sleep(0.5)
        exchange.pg.pg_ctl("stop", "-m", "immediate", *PG_CTL_WAIT)
        try:
            for _ in range(5):
                assert_unavailable(exchange.earn(7, key))  # the same key, retried later
                assert_unavailable(
                    exchange.call("GET", f"/v1/members/{exchange.member_id}/balance")
                )
                assert_unavailable(exchange.ready())
                assert_unavailable(exchange.admin_get("/v1/admin/partners"))
                time.sleep(0.2)
        finally:
            exchange.pg.pg_ctl("start", *PG_CTL_WAIT)
        _, heal_s = wait_until_healed(exchange, key, 7)
        time.sleep(0.5)
    load.check()
    assert load.statuses[503] > 0, "the load saw the outage"
    assert heal_s < HEAL_S_MAX
    assert exchange.ready().status == 200
    assert exchange.admin_get("/v1/admin/partners").status == 200
    assert "database_unavailable" in exchange.server_log()
    _assert_books(exchange, before + load.posted + 7, key, 7)


def test_terminated_connections_are_replaced_and_the_key_listener_returns(
    exchange: Exchange,
) -> None:
    assert _eventually(exchange.listening, 10)
    before, key = exchange.available(), str(uuid.uuid4())
    with Load(exchange) as load:
        time.sleep(0.5)
        exchange.terminate_backends()
        _, heal_s = wait_until_healed(exchange, key, 3)
        time.sleep(0.5)
    load.check()
    assert heal_s < HEAL_S_MAX
    assert _eventually(exchange.listening, HEAL_S_MAX), "the key-cache listener reconnected"
    _assert_books(exchange, before + load.posted + 3, key, 3)


def test_a_read_only_database_is_a_503_until_it_takes_writes_again(exchange: Exchange) -> None:
    before, key = exchange.available(), str(uuid.uuid4())
    exchange.sql("ALTER SYSTEM SET default_transaction_read_only = on")
    exchange.sql("SELECT pg_reload_conf()")
    try:
        # Sessions pick up a reloaded setting at their next statement: soon, not at once.
        balance = f"/v1/members/{exchange.member_id}/balance"
        assert _eventually(lambda: exchange.call("GET", balance).status == 503, 10)
        for _ in range(3):
            assert_unavailable(exchange.earn(2, key))
            assert_unavailable(exchange.ready())
    finally:
        exchange.sql("ALTER SYSTEM RESET default_transaction_read_only")
        exchange.sql("SELECT pg_reload_conf()")
    _, heal_s = wait_until_healed(exchange, key, 2)
    assert heal_s < HEAL_S_MAX
    _assert_books(exchange, before + 2, key, 2)
