"""The registry's SQL: partners, their terms, their keys, and the key-change NOTIFY.

Every function runs on the caller's connection, inside the caller's database
transaction (the registry owns it), and returns plain records; driver errors do not
leave this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange.errors import AlreadyExists, DatabaseUnavailable
from partners.tables import partner_keys, partner_terms, partners

__all__ = [
    "KEYS_CHANNEL",
    "KeyInfo",
    "PartnerRecord",
    "PartnerStatus",
    "insert_key",
    "insert_partner",
    "insert_terms",
    "load_partners",
    "lock_partner",
    "notify_key_change",
    "partner_status",
    "revoke_key",
    "revoke_keys_refused_by",
    "update_partner_row",
]

PartnerStatus = Literal["active", "suspended", "terminated"]
# The channel every server process listens on to drop its cached keys (partners.gateway).
KEYS_CHANNEL = "exchange_keys"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    status: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class PartnerRecord:
    partner_id: str
    name: str
    settlement_currency: str
    status: PartnerStatus
    issue_price: Decimal
    redemption_value: Decimal
    earn_rates: dict[str, Decimal]
    credit_limit: Decimal | None
    payment_terms_days: int
    tax_note: str | None
    terms_version: int
    created_at: datetime
    updated_at: datetime
    keys: tuple[KeyInfo, ...]
    tier_multipliers: dict[str, Decimal] = field(default_factory=dict)


# -- partners and terms ------------------------------------------------------------------------


async def insert_partner(
    conn: AsyncConnection, row: dict[str, Any], terms_row: dict[str, Any]
) -> None:
    """The partner row and its first terms; a partner id already taken -> AlreadyExists."""
    try:
        await conn.execute(insert(partners).values(row))
        await conn.execute(insert(partner_terms).values(terms_row))
    except IntegrityError:
        raise AlreadyExists(f"Partner {row['partner_id']} already exists.") from None


async def lock_partner(conn: AsyncConnection, partner_id: str) -> dict[str, Any] | None:
    """The partner row, locked until the database transaction ends; None if unknown."""
    current = (
        await conn.execute(
            select(partners).where(partners.c.partner_id == partner_id).with_for_update()
        )
    ).first()
    return None if current is None else dict(current._mapping)


async def update_partner_row(conn: AsyncConnection, partner_id: str, row: dict[str, Any]) -> None:
    await conn.execute(update(partners).where(partners.c.partner_id == partner_id).values(row))


async def insert_terms(conn: AsyncConnection, terms_row: dict[str, Any]) -> None:
    """Append one version to the partner's terms history."""
    await conn.execute(insert(partner_terms).values(terms_row))


async def partner_status(conn: AsyncConnection, partner_id: str) -> str | None:
    """The partner's status ('operator' for the reserved issuer row); None if unknown."""
    status: str | None = await conn.scalar(
        select(partners.c.status).where(partners.c.partner_id == partner_id)
    )
    return status


def _record(row: Any, keys: list[Any]) -> PartnerRecord:
    return PartnerRecord(
        partner_id=row.partner_id,
        name=row.name,
        settlement_currency=row.settlement_currency,
        status=row.status,
        issue_price=row.issue_price,
        redemption_value=row.redemption_value,
        earn_rates={currency: Decimal(rate) for currency, rate in row.earn_rates.items()},
        credit_limit=row.credit_limit,
        payment_terms_days=row.payment_terms_days,
        tax_note=row.tax_note,
        terms_version=row.terms_version,
        tier_multipliers={tier: Decimal(m) for tier, m in row.tier_multipliers.items()},
        created_at=row.created_at,
        updated_at=row.updated_at,
        keys=tuple(KeyInfo(key.key_id, key.status, key.created_at, key.revoked_at) for key in keys),
    )


async def load_partners(
    conn: AsyncConnection, partner_ids: list[str] | None
) -> list[PartnerRecord]:
    """The named partners with their keys (all partners when `partner_ids` is None), in
    partner id order."""
    query = select(partners).order_by(partners.c.partner_id)
    key_query = select(partner_keys).order_by(partner_keys.c.created_at, partner_keys.c.key_id)
    if partner_ids is not None:
        query = query.where(partners.c.partner_id.in_(partner_ids))
        key_query = key_query.where(partner_keys.c.partner_id.in_(partner_ids))
    else:  # the operator's goodwill row is no partner; it is fetched by name only
        query = query.where(partners.c.status != "operator")
    rows = list(await conn.execute(query))
    keys: dict[str, list[Any]] = {}
    for key in await conn.execute(key_query):
        keys.setdefault(key.partner_id, []).append(key)
    return [_record(row, keys.get(row.partner_id, [])) for row in rows]


# -- keys --------------------------------------------------------------------------------------


async def notify_key_change(conn: AsyncConnection, subject: str) -> None:
    """Tell every server process to forget cached keys (delivered when this commits)."""
    await conn.execute(
        text("SELECT pg_notify(:channel, :subject)"),
        {"channel": KEYS_CHANNEL, "subject": subject},
    )


async def insert_key(
    conn: AsyncConnection, *, key_id: str, partner_id: str, public_key: bytes, now: datetime
) -> None:
    await conn.execute(
        insert(partner_keys).values(
            key_id=key_id,
            partner_id=partner_id,
            public_key=public_key,
            status="active",
            created_at=now,
        )
    )


async def revoke_key(
    conn: AsyncConnection, partner_id: str, key_id: str, now: datetime
) -> KeyInfo | None:
    """Revoke one of the partner's keys (a repeat keeps the first revocation time); None
    if the partner has no such key."""
    row = (
        await conn.execute(
            update(partner_keys)
            .where(partner_keys.c.key_id == key_id, partner_keys.c.partner_id == partner_id)
            .values(status="revoked", revoked_at=func.coalesce(partner_keys.c.revoked_at, now))
            .returning(partner_keys)
        )
    ).first()
    if row is None:
        return None
    return KeyInfo(row.key_id, row.status, row.created_at, row.revoked_at)


async def revoke_keys_refused_by(
    engine: AsyncEngine, acceptable: Callable[[bytes], bool], now: datetime
) -> list[str]:
    """Revoke every active key whose public key `acceptable` refuses, and announce it, in
    one database transaction; the key ids revoked.

    Run at start-up, possibly before the schema exists or while the database is away:
    any database error is `DatabaseUnavailable` (its `reason` names the driver's error),
    which the caller logs and skips."""
    try:
        async with engine.begin() as conn:
            rows = await conn.execute(
                select(partner_keys.c.key_id, partner_keys.c.public_key).where(
                    partner_keys.c.status == "active"
                )
            )
            bad = [row.key_id for row in rows if not acceptable(bytes(row.public_key))]
            if bad:
                await conn.execute(
                    update(partner_keys)
                    .where(partner_keys.c.key_id.in_(bad), partner_keys.c.status == "active")
                    .values(status="revoked", revoked_at=now)
                )
                await notify_key_change(conn, "startup-check")
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(
            "The partner keys could not be checked.", reason=type(exc).__name__
        ) from exc
    return bad
