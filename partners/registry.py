"""The partner registry: onboarding, terms (prices, earn rates, credit limit), status, keys.

Every change of terms is appended to `partner_terms` with the time it took effect, and
the partner row carries the terms in force now. Postings copy the prices they were made
at, so a price change only ever affects postings made after it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange.clock import Clock
from exchange.errors import (
    AlreadyExists,
    DatabaseUnavailable,
    NotFound,
    PartnerNotFound,
    TerminationFinal,
    Unprocessable,
)
from exchange.ids import KEY_ID_SHAPE, PARTNER_ID_SHAPE
from exchange.logs import get_logger
from exchange.money import minor_unit, parse_price
from exchange.tables import partner_terms, partners
from exchange.text import UNPRINTABLE
from partners import signing
from partners.tables import partner_keys
from partners.webhooks import events as webhook_events

__all__ = [
    "KeyInfo",
    "PartnerChanges",
    "PartnerRecord",
    "PartnerSpec",
    "Unchanged",
    "add_key",
    "check_stored_keys",
    "create_partner",
    "decode_public_key",
    "get_partner",
    "list_partners",
    "revoke_key",
    "revoke_unacceptable_keys",
    "update_partner",
]

PartnerStatus = Literal["active", "suspended", "terminated"]
OPERATOR_ISSUER = "operator"  # the reserved row of migration 0006: goodwill points
_log = get_logger("partners.registry")
_SLUG = PARTNER_ID_SHAPE


class Unchanged:
    """Marks a field a PATCH leaves as it is (distinct from None, which clears a limit)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()


@dataclass(frozen=True, slots=True)
class PartnerSpec:
    partner_id: str
    name: str
    settlement_currency: str
    issue_price: Decimal
    redemption_value: Decimal
    earn_rates: dict[str, Decimal] = field(default_factory=dict)
    credit_limit: Decimal | None = None
    payment_terms_days: int = 14
    tax_note: str | None = None
    tier_multipliers: dict[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PartnerChanges:
    name: str | Unchanged = UNCHANGED
    status: PartnerStatus | Unchanged = UNCHANGED
    issue_price: Decimal | Unchanged = UNCHANGED
    redemption_value: Decimal | Unchanged = UNCHANGED
    earn_rates: dict[str, Decimal] | Unchanged = UNCHANGED
    credit_limit: Decimal | Unchanged | None = UNCHANGED
    payment_terms_days: int | Unchanged = UNCHANGED
    tax_note: str | Unchanged | None = UNCHANGED
    tier_multipliers: dict[str, Decimal] | Unchanged = UNCHANGED


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


def _known_shape(partner_id: str, key_id: str | None = None) -> None:
    """Ids of a shape the registry never issued name nothing: 404 without a query (a NUL
    byte in a path would otherwise reach PostgreSQL)."""
    if not PARTNER_ID_SHAPE.fullmatch(partner_id):
        raise PartnerNotFound("No partner has that id.")
    if key_id is not None and not KEY_ID_SHAPE.fullmatch(key_id):
        raise NotFound(f"Partner {partner_id} has no key with that id.")


def _validate(spec: PartnerSpec) -> None:
    if not _SLUG.fullmatch(spec.partner_id):
        raise Unprocessable(
            "partner_id must be a slug: lower-case letters, digits and '-', 1-63 characters."
        )
    _validate_name(spec.name)
    minor_unit(spec.settlement_currency)
    _validate_terms(
        spec.issue_price,
        spec.redemption_value,
        spec.earn_rates,
        spec.credit_limit,
        spec.settlement_currency,
    )


def _validate_name(name: str) -> None:
    """1-200 printable characters: a name appears in CSV reports and logs."""
    if not 1 <= len(name.strip()) <= 200:
        raise Unprocessable("name must be 1-200 characters.")
    if UNPRINTABLE.search(name):
        raise Unprocessable("name must not contain control, line-separator or bidi characters.")


def _validate_terms(
    issue_price: Decimal,
    redemption_value: Decimal,
    earn_rates: dict[str, Decimal],
    credit_limit: Decimal | None,
    currency: str,
) -> None:
    for what, price in (("issue_price", issue_price), ("redemption_value", redemption_value)):
        parse_price(f"{price:f}", what=what)
    for rate_currency, rate in earn_rates.items():
        minor_unit(rate_currency)
        parse_price(f"{rate:f}", what=f"earn_rates.{rate_currency}")
        if rate <= 0:
            raise Unprocessable(f"earn_rates.{rate_currency} must be positive.")
    if credit_limit is not None:
        if credit_limit < 0:
            raise Unprocessable("credit_limit must not be negative.")
        # normalize(): the stored NUMERIC(28,6) reads back as 50000.000000, which is
        # still a whole number of cents.
        exponent = credit_limit.normalize().as_tuple().exponent
        if isinstance(exponent, int) and -exponent > minor_unit(currency):
            raise Unprocessable(f"credit_limit has more decimals than {currency} allows.")


def _multipliers_row(multipliers: dict[str, Decimal]) -> dict[str, str]:
    """Tier multipliers as stored: positive decimals with up to 6 places, as strings."""
    for tier, multiplier in multipliers.items():
        parse_price(f"{multiplier:f}", what=f"tier_multipliers.{tier}")
        if multiplier <= 0:
            raise Unprocessable(f"tier_multipliers.{tier} must be positive.")
    return {tier: f"{multiplier:f}" for tier, multiplier in multipliers.items()}


def _terms_row(
    partner_id: str, version: int, row: dict[str, Any], at: datetime, by: str | None
) -> dict[str, Any]:
    return {
        "partner_id": partner_id,
        "version": version,
        "effective_at": at,
        "issue_price": row["issue_price"],
        "redemption_value": row["redemption_value"],
        "earn_rates": row["earn_rates"],
        "credit_limit": row["credit_limit"],
        "status": row["status"],
        "tier_multipliers": row["tier_multipliers"],
        "changed_by": by,
    }


async def create_partner(
    engine: AsyncEngine, clock: Clock, spec: PartnerSpec, *, changed_by: str | None = None
) -> PartnerRecord:
    _validate(spec)
    now = clock.now()
    row = {
        "partner_id": spec.partner_id,
        "name": spec.name.strip(),
        "settlement_currency": spec.settlement_currency,
        "status": "active",
        "terms_version": 1,
        "issue_price": spec.issue_price,
        "redemption_value": spec.redemption_value,
        "earn_rates": {currency: f"{rate:f}" for currency, rate in spec.earn_rates.items()},
        "credit_limit": spec.credit_limit,
        "payment_terms_days": spec.payment_terms_days,
        "tax_note": spec.tax_note,
        "tier_multipliers": _multipliers_row(spec.tier_multipliers),
        "created_at": now,
        "updated_at": now,
    }
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(partners).values(row))
            await conn.execute(
                insert(partner_terms).values(_terms_row(spec.partner_id, 1, row, now, changed_by))
            )
    except IntegrityError:
        raise AlreadyExists(f"Partner {spec.partner_id} already exists.") from None
    return await get_partner(engine, spec.partner_id)


def _check_status_change(row: dict[str, Any], changes: PartnerChanges, clock: Clock) -> None:
    """Termination is for ever; the operator's reserved row has no status to change."""
    wanted = changes.status
    if isinstance(wanted, Unchanged):
        return
    if row["status"] == "operator":
        raise Unprocessable("The operator's issuer row has no status to change.")
    if row["status"] == "terminated" and wanted != "terminated":
        raise TerminationFinal(
            f"Partner {row['partner_id']} was terminated on "
            f"{row['terminated_at']:%Y-%m-%d}; termination cannot be undone."
        )
    if wanted == "terminated" and row["terminated_at"] is None:
        row["terminated_at"] = clock.now()


async def update_partner(
    engine: AsyncEngine,
    clock: Clock,
    partner_id: str,
    changes: PartnerChanges,
    *,
    changed_by: str | None = None,
) -> PartnerRecord:
    """Apply a PATCH: new terms take effect now, for postings made from now on."""
    _known_shape(partner_id)
    if not isinstance(changes.name, Unchanged):
        _validate_name(changes.name)
    async with engine.begin() as conn:
        current = (
            await conn.execute(
                select(partners).where(partners.c.partner_id == partner_id).with_for_update()
            )
        ).first()
        if current is None:
            raise PartnerNotFound(f"No partner {partner_id}.")
        row = dict(current._mapping)
        _check_status_change(row, changes, clock)
        for name in (
            "name",
            "status",
            "issue_price",
            "redemption_value",
            "credit_limit",
            "payment_terms_days",
            "tax_note",
        ):
            value = getattr(changes, name)
            if not isinstance(value, Unchanged):
                row[name] = value
        if not isinstance(changes.earn_rates, Unchanged):
            row["earn_rates"] = {
                currency: f"{rate:f}" for currency, rate in changes.earn_rates.items()
            }
        if not isinstance(changes.tier_multipliers, Unchanged):
            row["tier_multipliers"] = _multipliers_row(changes.tier_multipliers)
        rates = {currency: Decimal(rate) for currency, rate in row["earn_rates"].items()}
        _validate_terms(
            row["issue_price"],
            row["redemption_value"],
            rates,
            row["credit_limit"],
            row["settlement_currency"],
        )
        now = clock.now()
        row["terms_version"] += 1
        row["updated_at"] = now
        await conn.execute(update(partners).where(partners.c.partner_id == partner_id).values(row))
        await _notify_key_change(conn, partner_id)
        await conn.execute(
            insert(partner_terms).values(
                _terms_row(partner_id, row["terms_version"], row, now, changed_by)
            )
        )
    return await get_partner(engine, partner_id)


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


async def _load(conn: AsyncConnection, partner_ids: list[str] | None) -> list[PartnerRecord]:
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


async def get_partner(engine: AsyncEngine, partner_id: str) -> PartnerRecord:
    _known_shape(partner_id)
    async with engine.connect() as conn:
        found = await _load(conn, [partner_id])
    if not found:
        raise PartnerNotFound(f"No partner {partner_id}.")
    return found[0]


async def list_partners(engine: AsyncEngine) -> list[PartnerRecord]:
    async with engine.connect() as conn:
        return await _load(conn, None)


def decode_public_key(text: str) -> bytes:
    """The raw key from its base64url, by the signing profile's one strict decoder; 422."""
    try:
        return signing.decode_public_key(text)
    except ValueError as exc:
        raise Unprocessable(f"public_key: {exc}.") from None


async def check_stored_keys(engine: AsyncEngine, clock: Clock) -> None:
    """At start-up: revoke stored keys the strict decoder refuses (see below). Skipped,
    with a log line, when the schema is not there yet or the database is away: /ready
    says so, and requests still refuse such keys one by one (verify_headers)."""
    try:
        await revoke_unacceptable_keys(engine, clock)
    except (SQLAlchemyError, OSError, DatabaseUnavailable) as exc:
        _log.warning("key_check_skipped", error=type(exc).__name__)


async def revoke_unacceptable_keys(engine: AsyncEngine, clock: Clock) -> list[str]:
    """Revoke every active stored key that the strict decoder would refuse today.

    Keys registered before the small-order check existed (or written to the table by
    other means) could let anyone sign as the partner; at start-up they are revoked and
    logged, so they fail closed (`key_revoked`). Returns the key ids revoked.
    """
    async with engine.begin() as conn:
        rows = await conn.execute(
            select(partner_keys.c.key_id, partner_keys.c.public_key).where(
                partner_keys.c.status == "active"
            )
        )
        bad = [
            row.key_id
            for row in rows
            if not signing.is_acceptable_public_key(bytes(row.public_key))
        ]
        if bad:
            await conn.execute(
                update(partner_keys)
                .where(partner_keys.c.key_id.in_(bad), partner_keys.c.status == "active")
                .values(status="revoked", revoked_at=clock.now())
            )
            await _notify_key_change(conn, "startup-check")
    for key_id in bad:
        _log.error("unacceptable_key_revoked", key_id=key_id, reason="small order or non-canonical")
    return bad


async def _notify_key_change(conn: AsyncConnection, subject: str) -> None:
    """Tell every server process to forget cached keys (delivered when this commits)."""
    await conn.execute(
        text("SELECT pg_notify(:channel, :subject)"),
        {"channel": "exchange_keys", "subject": subject},
    )


async def add_key(engine: AsyncEngine, clock: Clock, partner_id: str, public_key: str) -> KeyInfo:
    """Register a public key; the partner may hold several active keys (rotation)."""
    _known_shape(partner_id)
    raw = decode_public_key(public_key)
    key_id = f"key_{secrets.token_hex(12)}"
    now = clock.now()
    async with engine.begin() as conn:
        exists = await conn.scalar(
            select(func.count()).select_from(partners).where(partners.c.partner_id == partner_id)
        )
        if not exists:
            raise PartnerNotFound(f"No partner {partner_id}.")
        status = await conn.scalar(
            select(partners.c.status).where(partners.c.partner_id == partner_id)
        )
        if status == "operator":
            raise Unprocessable("The operator's issuer row cannot hold keys.")
        if status == "terminated":
            raise TerminationFinal(f"Partner {partner_id} has been terminated.")
        await conn.execute(
            insert(partner_keys).values(
                key_id=key_id,
                partner_id=partner_id,
                public_key=raw,
                status="active",
                created_at=now,
            )
        )
        await _notify_key_change(conn, key_id)
    return KeyInfo(key_id, "active", now, None)


async def revoke_key(engine: AsyncEngine, clock: Clock, partner_id: str, key_id: str) -> KeyInfo:
    """Revoke a key at once. Postings it signed stay verifiable (the key is kept)."""
    _known_shape(partner_id, key_id)
    now = clock.now()
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                update(partner_keys)
                .where(partner_keys.c.key_id == key_id, partner_keys.c.partner_id == partner_id)
                .values(
                    status="revoked",
                    revoked_at=func.coalesce(partner_keys.c.revoked_at, now),
                )
                .returning(partner_keys)
            )
        ).first()
        if row is not None and row.revoked_at == now:
            # Newly revoked (not a repeat): the event commits with the revocation.
            await webhook_events.key_revoked(conn, partner_id, key_id, now)
        await _notify_key_change(conn, key_id)
    if row is None:
        raise NotFound(f"Partner {partner_id} has no key {key_id}.")
    return KeyInfo(row.key_id, row.status, row.created_at, row.revoked_at)
