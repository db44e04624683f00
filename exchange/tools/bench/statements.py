"""`exchange bench --statements`: where PostgreSQL's time goes, statement by statement.

With the option, the bench's PostgreSQL loads `pg_stat_statements` (`track = all`, so the
statements that triggers and foreign-key checks run inside a write are counted too, and
`track_planning = on`, so each statement's plannings and their time too). The counters
are reset before each scenario and read after it: the JSON keeps each scenario's
costliest statements under `statements.<scenario>`, and the run prints the top few.

Three things to know when reading them:
- A nested statement's time is also inside its top-level statement's (`toplevel` says
  which is which); the shares printed are of the top-level statements' time only.
- The execution time is wall time inside PostgreSQL: on a machine whose cores are all
  busy it includes waiting for a core, so it says where PostgreSQL's time goes, in
  proportion, not how much CPU each statement costs.
- PostgreSQL 18 identifies a statement's tables by their aliases, so foreign-key checks
  against different tables with text keys (`members`, `partners`, `batches`: all
  `... FROM ONLY "public"."t" x WHERE key = $1 FOR KEY SHARE OF x`) are counted as one
  statement, shown with the first table's name.
- Counting plannings makes each planning dearer, so `plan_ms` overstates what planning
  costs without the option (docs/performance.md, "Eighteenth round").
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from exchange.embedded import EmbeddedPostgres

__all__ = ["EXTENSION", "StatementStat", "enable", "reset", "shares", "top"]

EXTENSION = "pg_stat_statements"
KEPT = 25  # statements kept per scenario
QUERY_CHARS = 240


@dataclass(frozen=True, slots=True)
class StatementStat:
    query: str  # normalised ($1, $2, ...), whitespace collapsed, cut to QUERY_CHARS
    toplevel: bool  # False: run inside another statement (a trigger, a foreign-key check)
    calls: int
    rows: int
    total_ms: float
    mean_ms: float
    wal_bytes: int
    plans: int  # plannings: once per connection for a kept generic plan, each call otherwise
    plan_ms: float  # their time, apart from total_ms


def enable(postgres: EmbeddedPostgres) -> None:
    """Create the extension (its library preloaded by `start_postgres`) and count nested
    statements too."""
    postgres.psql(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}")
    postgres.psql(f"ALTER SYSTEM SET {EXTENSION}.track = 'all'")
    postgres.psql(f"ALTER SYSTEM SET {EXTENSION}.track_planning = on")
    postgres.psql("SELECT pg_reload_conf()")


def reset(postgres: EmbeddedPostgres) -> None:
    postgres.psql("SELECT pg_stat_statements_reset()")


_TOP_SQL = f"""
SELECT coalesce(json_agg(s ORDER BY s.total_ms DESC), '[]')
FROM (
    SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), {QUERY_CHARS}) AS query,
           toplevel, calls, rows,
           round(total_exec_time::numeric, 1)::float8 AS total_ms,
           round(mean_exec_time::numeric, 3)::float8 AS mean_ms,
           wal_bytes::bigint AS wal_bytes,
           plans,
           round(total_plan_time::numeric, 1)::float8 AS plan_ms
    FROM pg_stat_statements
    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
    ORDER BY total_exec_time DESC
    LIMIT {KEPT}
) AS s
"""  # noqa: S608 - built from the constants above, never from input


def top(postgres: EmbeddedPostgres) -> list[StatementStat]:
    """The scenario's costliest statements in the exchange's database, costliest first."""
    return msgspec.json.decode(postgres.psql(_TOP_SQL).strip(), type=list[StatementStat])


def shares(stats: list[StatementStat], shown: int) -> list[tuple[int, StatementStat]]:
    """The costliest top-level statements with their percent of all top-level time."""
    toplevel = [s for s in stats if s.toplevel]
    total = sum(s.total_ms for s in toplevel) or 1.0
    return [(round(100 * s.total_ms / total), s) for s in toplevel[:shown]]
