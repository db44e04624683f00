"""The one statement that spends signatures' nonces, written once for its three callers:
the ledger's batch (durably, in the posting's transaction), the gateway's writer (reads'
and refused requests' nonces) and the balance read's statement (not durably).

Distinct pairs only (callers remove duplicates first); a pair already stored is skipped,
and the pairs inserted come back (a pair not among them was already used: a replay).
Sorted, so two writes of overlapping pairs wait in one order and never deadlock; a pair
another transaction inserted but has not committed makes this insert wait for its end.
The times travel as text: asyncpg encodes `text[]` with codecs of its own, where a
`timestamptz[]` made it look the array type up in the catalog once per connection
(docs/performance.md, "Eighteenth round").
"""

from __future__ import annotations

__all__ = ["NOT_DURABLE", "spend_nonces_sql"]

# A CTE: `set_config(..., is_local => true)` turns synchronous_commit off for the
# statement's own database transaction only, so its commit does not wait for the WAL
# flush (docs/ledger.md, "Nonces"). A statement joins it so that it runs first.
NOT_DURABLE = "not_durable AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))"


def spend_nonces_sql(first: int, *, not_durable: bool = False) -> str:
    """The INSERT of the pairs in parameters `$first` (key ids), `$first + 1` (nonces) and
    `$first + 2` (times, as text); with `not_durable`, joined to the `NOT_DURABLE` CTE,
    which the statement must define."""
    joined = "not_durable, " if not_durable else ""
    keys, nonces, times = (f"${first + offset}" for offset in range(3))
    return f"""INSERT INTO signature_nonces (key_id, nonce, seen_at)
SELECT n.* FROM {joined}unnest({keys}::text[], {nonces}::text[], {times}::text[]::timestamptz[])
       AS n(key_id, nonce, seen_at)
ORDER BY n.key_id, n.nonce
ON CONFLICT DO NOTHING
RETURNING key_id, nonce"""  # noqa: S608 - built from parameter numbers, never from input
