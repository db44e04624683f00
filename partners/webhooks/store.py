"""All SQL of webhooks: subscriptions, delivery state of outbox events, exchange keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.tables import webhook_outbox
from partners.webhooks.tables import (
    exchange_keys,
    webhook_deliveries,
    webhook_fanout,
    webhook_subscriptions,
)

__all__ = [
    "FAN_OUT",
    "active_key",
    "backlog",
    "claim_due",
    "delete_subscription",
    "fan_out",
    "get_subscription",
    "insert_key",
    "keys_to_seal",
    "list_deliveries",
    "list_keys",
    "lock_keys",
    "mark_delivery",
    "put_subscription",
    "reseal_key",
    "retry_delivery",
]


async def put_subscription(
    conn: AsyncConnection, partner_id: str, url: str, events: list[str], at: datetime
) -> Any:
    values = {"partner_id": partner_id, "url": url, "events": events, "updated_at": at}
    statement = (
        insert(webhook_subscriptions)
        .values(**values)
        .on_conflict_do_update(
            index_elements=[webhook_subscriptions.c.partner_id],
            set_={"url": url, "events": events, "updated_at": at},
        )
        .returning(webhook_subscriptions)
    )
    return (await conn.execute(statement)).one()


async def get_subscription(conn: AsyncConnection, partner_id: str) -> Row[Any] | None:
    query = select(webhook_subscriptions).where(webhook_subscriptions.c.partner_id == partner_id)
    return (await conn.execute(query)).first()


async def delete_subscription(conn: AsyncConnection, partner_id: str) -> bool:
    result = await conn.execute(
        delete(webhook_subscriptions).where(webhook_subscriptions.c.partner_id == partner_id)
    )
    return bool(result.rowcount)


# Events past the cursor whose writing database transaction is over: every transaction
# with an id below the snapshot's xmin has committed or rolled back, so no event can
# appear behind the cursor later (ids are assigned at the first write, not at commit, so
# a plain sequence would let a slow transaction's event land behind it and be missed).
FAN_OUT = text(
    """
    WITH batch AS (
        SELECT event_id, partner_id, created_at, tx_id FROM webhook_outbox
        WHERE (tx_id, event_id) > (:tx_id, :event_id)
          AND tx_id < (pg_snapshot_xmin(pg_current_snapshot())::text)::bigint
        ORDER BY tx_id, event_id
        LIMIT :limit
    ), added AS (
        INSERT INTO webhook_deliveries (event_id, partner_id, status, attempts, next_attempt_at)
        SELECT event_id, partner_id, 'pending', 0, created_at FROM batch
        ON CONFLICT (event_id) DO NOTHING
    )
    SELECT tx_id, event_id FROM batch ORDER BY tx_id DESC, event_id DESC LIMIT 1
    """
)


async def fan_out(conn: AsyncConnection, limit: int) -> bool | None:
    """A pending delivery row for the next `limit` outbox events past the cursor, and the
    cursor moved past them: O(new events), however long the outbox. Returns None if
    another process holds the cursor (it is fanning out; this one skips), else whether
    there may be more. Call it in its own database transaction."""
    cursor = (
        await conn.execute(
            select(webhook_fanout.c.tx_id, webhook_fanout.c.event_id)
            .where(webhook_fanout.c.id == 1)
            .with_for_update(skip_locked=True)
        )
    ).first()
    if cursor is None:
        return None
    # A statement of its own, so its snapshot (and xmin) is taken after the lock.
    last = (
        await conn.execute(
            FAN_OUT, {"tx_id": cursor.tx_id, "event_id": cursor.event_id, "limit": limit}
        )
    ).first()
    if last is None:
        return False
    await conn.execute(
        update(webhook_fanout)
        .where(webhook_fanout.c.id == 1)
        .values(tx_id=last.tx_id, event_id=last.event_id)
    )
    return True


async def backlog(conn: AsyncConnection) -> int:
    """Events not yet delivered: pending deliveries, and outbox events past the fan-out
    cursor (written by a fact's database transaction moments ago); both by index."""
    cursor = select(webhook_fanout.c.tx_id, webhook_fanout.c.event_id).where(
        webhook_fanout.c.id == 1
    )
    mark = (await conn.execute(cursor)).first()
    pending = select(func.count()).where(webhook_deliveries.c.status == "pending")
    unpicked = select(func.count()).select_from(webhook_outbox)
    if mark is not None:
        unpicked = unpicked.where(
            or_(
                webhook_outbox.c.tx_id > mark.tx_id,
                and_(
                    webhook_outbox.c.tx_id == mark.tx_id, webhook_outbox.c.event_id > mark.event_id
                ),
            )
        )
    row = (await conn.execute(select(pending.scalar_subquery(), unpicked.scalar_subquery()))).one()
    return int(row[0]) + int(row[1])


async def claim_due(conn: AsyncConnection, now: datetime, limit: int) -> list[Row[Any]]:
    """Due deliveries, oldest event first, locked for this database transaction: exactly
    one process delivers each (the others skip locked rows)."""
    query = (
        select(
            webhook_deliveries,
            webhook_outbox.c.type,
            webhook_outbox.c.data,
            webhook_outbox.c.created_at,
            webhook_subscriptions.c.url,
            webhook_subscriptions.c.events,
        )
        .join(webhook_outbox, webhook_outbox.c.event_id == webhook_deliveries.c.event_id)
        .outerjoin(
            webhook_subscriptions,
            webhook_subscriptions.c.partner_id == webhook_deliveries.c.partner_id,
        )
        .where(
            webhook_deliveries.c.status == "pending", webhook_deliveries.c.next_attempt_at <= now
        )
        .order_by(webhook_outbox.c.created_at, webhook_deliveries.c.event_id)
        .limit(limit)
        .with_for_update(of=webhook_deliveries, skip_locked=True)
    )
    return list((await conn.execute(query)).all())


async def mark_delivery(conn: AsyncConnection, event_id: str, **values: Any) -> None:
    await conn.execute(
        update(webhook_deliveries).where(webhook_deliveries.c.event_id == event_id).values(**values)
    )


async def list_deliveries(
    conn: AsyncConnection, partner_id: str, status: str | None, after: str | None, limit: int
) -> list[Row[Any]]:
    query = (
        select(webhook_deliveries, webhook_outbox.c.type, webhook_outbox.c.created_at)
        .join(webhook_outbox, webhook_outbox.c.event_id == webhook_deliveries.c.event_id)
        .where(webhook_deliveries.c.partner_id == partner_id)
        .order_by(webhook_outbox.c.created_at, webhook_deliveries.c.event_id)
        .limit(limit)
    )
    if status is not None:
        query = query.where(webhook_deliveries.c.status == status)
    if after is not None:
        # Keyset pagination on (created_at, event_id), anchored at the cursor's event; an
        # unknown cursor matches nothing and the page is empty.
        anchor = (
            select(webhook_outbox.c.created_at)
            .where(webhook_outbox.c.event_id == after)
            .scalar_subquery()
        )
        query = query.where(
            or_(
                webhook_outbox.c.created_at > anchor,
                and_(webhook_outbox.c.created_at == anchor, webhook_outbox.c.event_id > after),
            )
        )
    return list((await conn.execute(query)).all())


async def retry_delivery(
    conn: AsyncConnection, partner_id: str, event_id: str, now: datetime
) -> bool:
    """Send the event again at once (a delivered or failed one too), with a fresh budget."""
    result = await conn.execute(
        update(webhook_deliveries)
        .where(
            and_(
                webhook_deliveries.c.event_id == event_id,
                webhook_deliveries.c.partner_id == partner_id,
            )
        )
        .values(status="pending", attempts=0, next_attempt_at=now)
    )
    return bool(result.rowcount)


async def lock_keys(conn: AsyncConnection) -> None:
    """Serialise key creation and rotation across processes (one database transaction)."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('exchange_keys'))"))


async def active_key(conn: AsyncConnection) -> Row[Any] | None:
    query = (
        select(exchange_keys)
        .where(exchange_keys.c.status == "active")
        .order_by(exchange_keys.c.created_at.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def insert_key(
    conn: AsyncConnection,
    key_id: str,
    public_key: str,
    sealed: tuple[str, bytes],
    at: datetime,
) -> None:
    """The new active key (its private half sealed: `(kek_id, ciphertext)`); the active
    one before it is retired."""
    kek_id, private_key = sealed
    await conn.execute(
        update(exchange_keys)
        .where(exchange_keys.c.status == "active")
        .values(status="retired", retired_at=func.coalesce(exchange_keys.c.retired_at, at))
    )
    await conn.execute(
        exchange_keys.insert().values(
            key_id=key_id,
            public_key=public_key,
            private_key=private_key,
            kek_id=kek_id,
            status="active",
            created_at=at,
        )
    )


async def list_keys(conn: AsyncConnection) -> list[Row[Any]]:
    query = select(exchange_keys).order_by(exchange_keys.c.created_at)
    return list((await conn.execute(query)).all())


async def keys_to_seal(conn: AsyncConnection, kek_id: str) -> list[Row[Any]]:
    """Keys not sealed by `kek_id` (plaintext ones included), locked for re-sealing."""
    query = (
        select(exchange_keys)
        .where(or_(exchange_keys.c.kek_id.is_(None), exchange_keys.c.kek_id != kek_id))
        .order_by(exchange_keys.c.created_at)
        .with_for_update()
    )
    return list((await conn.execute(query)).all())


async def reseal_key(conn: AsyncConnection, key_id: str, sealed: tuple[str, bytes]) -> None:
    kek_id, private_key = sealed
    await conn.execute(
        update(exchange_keys)
        .where(exchange_keys.c.key_id == key_id)
        .values(kek_id=kek_id, private_key=private_key)
    )
