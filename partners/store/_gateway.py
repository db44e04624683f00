"""The signature gateway's SQL, on the hot path: key lookups, batched nonces, and the
connection that LISTENs for key changes.

Lookups and nonce writes run on the asyncpg connection under one pooled connection
(`exchange.db.driver_connection`, which makes an unreachable database
`DatabaseUnavailable`). The listener is a connection of its own, outside the pool, for
the life of the process; `listen` opens it and `KeyListener` is all the gateway holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.db import CONNECT_TIMEOUT_S, driver_connection, libpq_url
from exchange.errors import DatabaseUnavailable
from exchange.store import NOT_DURABLE, spend_nonces_sql
from partners.signing import KeyRecord

__all__ = ["KeyListener", "fetch_key", "fetch_key_ids", "insert_nonces", "listen"]

_KEY_SQL = """
SELECT k.key_id, k.partner_id, k.public_key, k.status, p.status AS partner_status
FROM partner_keys AS k JOIN partners AS p ON p.partner_id = k.partner_id
WHERE k.key_id = $1
"""
_DIRECTORY_SQL = "SELECT key_id FROM partner_keys LIMIT $1"
# Reads' nonces (`durable=False`) commit without waiting for the flush to disk, in one
# round trip (BEGIN; SET LOCAL; INSERT; COMMIT would be four).
_NONCES_SQL = spend_nonces_sql(1)
_NONCES_NOT_DURABLE_SQL = f"WITH {NOT_DURABLE}\n{spend_nonces_sql(1, not_durable=True)}"


async def fetch_key(engine: AsyncEngine, key_id: str) -> KeyRecord | None:
    """The key with its partner's status, or None if no key has that id."""
    async with driver_connection(engine) as conn:
        row = await conn.fetchrow(_KEY_SQL, key_id)
    if row is None:
        return None
    return KeyRecord(
        key_id=row["key_id"],
        partner_id=row["partner_id"],
        public_key=bytes(row["public_key"]),
        key_active=row["status"] == "active",
        partner_active=row["partner_status"] == "active",
        partner_terminated=row["partner_status"] == "terminated",
    )


async def fetch_key_ids(engine: AsyncEngine, limit: int) -> list[str]:
    """At most `limit` registered key ids (pass one more than you can hold, to tell)."""
    async with driver_connection(engine) as conn:
        rows = await conn.fetch(_DIRECTORY_SQL, limit)
    return [row["key_id"] for row in rows]


async def insert_nonces(
    engine: AsyncEngine,
    pairs: Sequence[tuple[str, str]],
    seen_at: Sequence[datetime],
    *,
    durable: bool,
) -> set[tuple[str, str]]:
    """Insert distinct (key id, nonce) pairs in one statement and one commit; the pairs
    that were new (a pair not returned was already used: a replay). `durable=False`
    commits without waiting for the WAL flush (reads' nonces only)."""
    async with driver_connection(engine) as conn:
        rows = await conn.fetch(
            _NONCES_SQL if durable else _NONCES_NOT_DURABLE_SQL,
            [key_id for key_id, _ in pairs],
            [nonce for _, nonce in pairs],
            [at.isoformat() for at in seen_at],  # text: see exchange.store._nonces
        )
    return {(row["key_id"], row["nonce"]) for row in rows}


class KeyListener:
    """One LISTENing connection; closed for good once lost (open a new one)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    def is_closed(self) -> bool:
        return self._connection.is_closed()

    async def close(self) -> None:
        """Close it; a connection that is already gone is fine."""
        with contextlib.suppress(Exception):
            await self._connection.close(timeout=CONNECT_TIMEOUT_S)


async def listen(
    database_url: str,
    channel: str,
    on_notify: Callable[[], None],
    on_lost: Callable[[KeyListener], None],
) -> KeyListener:
    """Open a connection that calls `on_notify` for each NOTIFY on `channel`, and
    `on_lost(listener)` when the connection is terminated. Cannot connect or listen ->
    `DatabaseUnavailable` (its `reason` names the driver's error)."""
    connection = None
    try:
        connection = await asyncpg.connect(libpq_url(database_url), timeout=CONNECT_TIMEOUT_S)
        listener = KeyListener(connection)

        def notified(*_: Any) -> None:
            on_notify()

        def lost(_: object) -> None:
            on_lost(listener)

        await connection.add_listener(channel, notified)
        connection.add_termination_listener(lost)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if connection is not None:
            connection.terminate()
        raise DatabaseUnavailable(
            "Cannot listen for key changes.", reason=type(exc).__name__
        ) from exc
    return listener
