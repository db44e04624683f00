"""Idempotency keys: the one claim and the one "remember the response", for every caller.

Keys live in a scope: partners' keys (owned by a partner or the reserved `operator` row),
members' keys (`member_idempotency_keys`, owned by a member) or operator tokens' keys
(`settlement.store.OPERATOR_KEYS`). A partner's key is stored in one of two places: on the
posting its request made (the posting path, `_write`) or in `idempotency_records` (every
other request); claims read both (migration 0014).
The exactly-once steps are the same in both:

    claim      try-lock (owner, key) for this database transaction (never wait: a key
               locked by another transaction is being processed, the caller answers 409),
               and read the response stored under it, if any
    remember   store the response under the key, in the same database transaction as the
               effect; the lock is released at commit, after the response is visible

The posting path claims with `barrier=True` (the default): the settlement barrier
(shared) is entered in the same statement, one round trip; its keys are remembered on the
batch's postings, inside its single write statement (`_write`). A key committed by another
transaction between that statement's snapshot and its try-lock is missed there, but the
write then fails as a duplicate key (the postings' unique index, or the trigger that keeps
a key in one place) and the batch's retry replays it. Callers that do
not retry (enrolment, sessions, batch acceptance, adjustment requests: no posting, so no
barrier) claim with `barrier=False`: the stored responses are read in a second statement,
after the locks are held, so they see everything committed before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from exchange.members.tables import member_idempotency_keys
from exchange.store._connection import Connection
from exchange.store._records import SETTLEMENT_BARRIER_KEY, IdempotencyRecord, StoredResponse
from exchange.store._rows import column_list
from exchange.store._write import encode_rows, json_rows
from exchange.tables import idempotency_records

__all__ = [
    "BARRIER_CTE",
    "MEMBER_KEYS",
    "PARTNER_KEYS",
    "RECORD_COLUMNS",
    "KeyScope",
    "claim_keys",
    "enter_settlement_barrier",
    "remember",
]

Claim = tuple[str, str]  # (owner, key)
_BARRIER_SQL = "SELECT pg_advisory_xact_lock_shared($1::bigint)"
# The settlement barrier (shared), entered once before the statement produces a row.
BARRIER_CTE = "barrier AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared($3::bigint) AS held)"


# An IdempotencyRecord's columns after its owner (`partner_id`, `member_id`, `token_id`).
RECORD_COLUMNS = ("key", "fingerprint", "status_code", "response", "posting_id")


@dataclass(frozen=True, slots=True)
class KeyScope:
    table: str  # where `remember` stores responses
    owner: str  # the owner's column
    # Prefix of the advisory lock's text, so that equal (owner, key) pairs of two scopes
    # never share a lock; kept as it was when the scopes had their own functions.
    lock_prefix: str
    # The record's columns this scope's table has, a prefix of RECORD_COLUMNS (operator
    # keys have no posting).
    record_columns: tuple[str, ...] = RECORD_COLUMNS
    # The scope's keys may also be stored on postings (partners' keys, by the posting
    # path): claims then look in both places. Two joins, not the view `idempotency_keys`:
    # PostgreSQL does not push the key into a UNION ALL view's branches, and read every
    # keyed posting of the partner instead (docs/performance.md, "Eighth round").
    on_postings: bool = False

    def _stored(self) -> tuple[str, str]:
        """(the joins from `c(owner, key)` to the stored response, its three columns)."""
        joins = f"LEFT JOIN {self.table} AS i ON i.{self.owner} = c.owner AND i.key = c.key"
        if not self.on_postings:
            return joins, "i.fingerprint, i.status_code, i.response"
        joins += "\nLEFT JOIN postings AS p ON p.partner_id = c.owner AND p.idempotency_key = c.key"
        return joins, (
            "coalesce(p.request_fingerprint, i.fingerprint) AS fingerprint, "
            "coalesce(p.response_status, i.status_code) AS status_code, "
            "coalesce(p.response, i.response) AS response"
        )

    def _lock(self, *, spent: str | None = None) -> str:
        lock = (
            f"pg_try_advisory_xact_lock(hashtextextended({self.lock_prefix}"
            "c.owner || chr(31) || c.key, 0))"
        )
        if spent is None:
            return f"{lock} AS locked"
        # A claim whose request's nonce this statement did not spend (a replay) is not
        # try-locked: its request is refused before its key is claimed.
        spent_pairs = f"SELECT s.key_id || chr(31) || s.nonce FROM {spent} AS s"  # noqa: S608
        unspent = f"c.nonce IS NOT NULL AND c.nonce NOT IN ({spent_pairs})"
        return f"CASE WHEN {unspent} THEN false ELSE {lock} END AS locked"

    def claim_sql(self, *, barrier: bool) -> str:
        if not barrier:
            unnest = "unnest_small($1::text[], $2::text[]) AS c(owner, key)"
            return f"SELECT c.owner, c.key, {self._lock()} FROM {unnest}"  # noqa: S608
        return f"WITH {BARRIER_CTE}\n{self.claimed_sql()}"

    def claimed_sql(self, *, spent: tuple[str, int] | None = None) -> str:
        """The barrier claim's SELECT, after `BARRIER_CTE`: (owner, key) pairs from $1 and
        $2, each try-locked, with the response stored under it. Also the first part of
        the posting path's claim-and-lock statement (`_posting.claim_and_lock`), which
        passes `spent`: the name of its CTE of the nonces it spent (`key_id`, `nonce`) and
        the parameter with each claim's nonce (`key_id || chr(31) || nonce`, or NULL for
        a request without one); a claim whose nonce is not among them is not locked."""
        joins, stored = self._stored()
        if spent is None:
            claims = "unnest_small($1::text[], $2::text[]) AS c(owner, key)"
            lock = self._lock()
        else:
            name, nonces = spent
            claims = (
                f"unnest_small($1::text[], $2::text[], ${nonces}::text[]) AS c(owner, key, nonce)"
            )
            lock = self._lock(spent=name)
        # The barrier CTE runs once, before any row is produced.
        return f"""
SELECT c.owner, c.key, {lock}, {stored}
FROM barrier
CROSS JOIN {claims}
{joins}
"""  # noqa: S608 - built from the constant scopes below, never from input

    def stored_sql(self) -> str:
        joins, stored = self._stored()
        return (
            f"SELECT * FROM (SELECT c.owner, c.key, {stored} "  # noqa: S608
            f"FROM unnest_small($1::text[], $2::text[]) AS c(owner, key) {joins}) AS found "
            "WHERE found.fingerprint IS NOT NULL"
        )

    def remember_sql(self) -> str:
        # The partners' table's columns (the batch write's), with this scope's owner.
        columns = ((self.owner, "text"), *column_list(idempotency_records, self.record_columns))
        names = ", ".join(name for name, _ in columns)
        return (
            f"INSERT INTO {self.table} ({names}, created_at) "  # noqa: S608
            f"SELECT v.*, coalesce($2::timestamptz, now()) FROM ({json_rows(1, columns)}) AS v"
        )


PARTNER_KEYS = KeyScope(idempotency_records.name, "partner_id", "", on_postings=True)
MEMBER_KEYS = KeyScope(member_idempotency_keys.name, "member_id", "'member' || chr(31) || ")


async def claim_keys(
    conn: Connection,
    claims: Sequence[Claim],
    *,
    scope: KeyScope = PARTNER_KEYS,
    barrier: bool = True,
) -> tuple[set[Claim], dict[Claim, StoredResponse]]:
    """Try-lock each (owner, key); return the claims locked and the responses stored under
    them. With `barrier` (the posting path's default), enter the settlement barrier
    (shared) first, in the same statement; with no claims, only that."""
    if not claims:
        if barrier:
            await enter_settlement_barrier(conn)
        return set(), {}
    owners = [owner for owner, _ in claims]
    keys = [key for _, key in claims]
    if barrier:
        rows = await conn.fetch(scope.claim_sql(barrier=True), owners, keys, SETTLEMENT_BARRIER_KEY)
        locked = {(row["owner"], row["key"]) for row in rows if row["locked"]}
        found = [row for row in rows if row["locked"] and row["fingerprint"] is not None]
    else:
        rows = await conn.fetch(scope.claim_sql(barrier=False), owners, keys)
        locked = {(row["owner"], row["key"]) for row in rows if row["locked"]}
        if not locked:
            return locked, {}
        ordered = sorted(locked)
        found = await conn.fetch(
            scope.stored_sql(), [owner for owner, _ in ordered], [key for _, key in ordered]
        )
    stored = {
        (row["owner"], row["key"]): StoredResponse(
            bytes(row["fingerprint"]), row["status_code"], bytes(row["response"])
        )
        for row in found
    }
    return locked, stored


async def enter_settlement_barrier(conn: Connection) -> None:
    """Hold the settlement barrier (shared) until the end of the database transaction:
    every posting does, so closing a period waits for the postings in flight."""
    await conn.execute(_BARRIER_SQL, SETTLEMENT_BARRIER_KEY)


async def remember(
    conn: Connection,
    records: Sequence[IdempotencyRecord],
    *,
    scope: KeyScope = PARTNER_KEYS,
    at: datetime | None = None,
) -> None:
    """Store each response under its key (`at`: the record's time; default the database
    transaction's start). The posting path stores its keys on its postings instead."""
    if records:
        await conn.execute(scope.remember_sql(), encode_rows(records), at)
