"""Plans made while the journal was empty still find rows by key once it has grown.

The posting path keeps its plans per connection (docs/performance.md, "Fourth round"). On
a new database, analyzed while empty, PostgreSQL planned the claim's idempotency lookup
as a read of every posting, and kept that plan until the next `ANALYZE`: the claim cost
0.57 ms a call at 1,000 postings and 2.6 ms at 4,000 ("Fourteenth round"). A ledger
transaction now plans with sequential scans ruled out wherever an index can serve
(`exchange.store.transaction`).

The plans are read as PostgreSQL executes them: `auto_explain` on the pooled connection,
its log sent to the client, every statement of the posting path and the statements its
functions and triggers run.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from exchange.clock import FrozenClock
from exchange.db import create_engine, driver_connection
from exchange.service import Earn, LedgerRequest, LedgerService
from tests.support import add_partner, enrol, post

# The tables that grow with the journal; each is read by key on the posting path.
GROWING = ("postings", "entries", "lots", "allocations", "holds", "members", "member_links",
           "idempotency_records", "signature_nonces")  # fmt: skip
WHOLE_READ = re.compile(rf"Seq Scan on ({'|'.join(GROWING)})\b")


async def test_plans_made_on_an_empty_journal_read_it_by_key_as_it_grows(
    database_url: str, clock: FrozenClock
) -> None:
    engine = create_engine(database_url, pool_size=1)  # one connection: one plan cache
    try:
        ledger = LedgerService(engine, clock, points_ttl=timedelta(days=1095))
        await add_partner(engine, clock)
        members = [await enrol(ledger, "grocer") for _ in range(3)]
        async with engine.begin() as conn:
            await conn.execute(text("ANALYZE"))  # statistics of an empty journal
        logged: list[str] = []

        def listen(_: Any, message: Any) -> None:
            logged.append(str(message.message))

        async with driver_connection(engine) as conn:
            await conn.execute(
                "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                "SET auto_explain.log_nested_statements = on; SET client_min_messages = log"
            )
            conn.add_log_listener(listen)
        try:
            # Eight lone earns: the plan cache keeps generic plans from the sixth on.
            for n in range(8):
                await post(ledger, Earn("grocer", members[n % 3], f"young-{n}", points=10))
            # The journal grows past what its statistics say ...
            await ledger.submit(
                [
                    LedgerRequest(Earn("grocer", members[n % 3], f"bulk-{n}", points=1))
                    for n in range(300)
                ]
            )
            before = len(logged)
            # ... and the kept plans run again.
            for n in range(3):
                await post(ledger, Earn("grocer", members[n], f"grown-{n}", points=10))
            plans = logged[before:]
        finally:
            async with driver_connection(engine) as conn:
                conn.remove_log_listener(listen)
                await conn.execute("RESET client_min_messages")
        assert any("postings" in plan for plan in plans), "auto_explain logged no plan"
        whole = [match.group(0) for plan in plans for match in WHOLE_READ.finditer(plan)]
        assert whole == []
    finally:
        await engine.dispose()
