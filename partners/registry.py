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
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import Clock
from exchange.errors import (
    DatabaseUnavailable,
    NotFound,
    PartnerNotFound,
    TerminationFinal,
    Unprocessable,
)
from exchange.ids import KEY_ID_SHAPE, PARTNER_ID_SHAPE
from exchange.logs import get_logger
from exchange.money import minor_unit, parse_price
from exchange.text import UNPRINTABLE
from partners import signing, store
from partners.store import KeyInfo, PartnerRecord, PartnerStatus
from partners.webhooks import events as webhook_events

__all__ = [
    "KeyInfo",
    "PartnerChanges",
    "PartnerRecord",
    "PartnerSpec",
    "PartnerStatus",
    "Unchanged",
    "add_key",
    "check_stored_keys",
    "create_partner",
    "get_partner",
    "list_partners",
    "revoke_key",
    "revoke_unacceptable_keys",
    "update_partner",
]

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
    async with engine.begin() as conn:
        await store.insert_partner(conn, row, _terms_row(spec.partner_id, 1, row, now, changed_by))
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
        row = await store.lock_partner(conn, partner_id)
        if row is None:
            raise PartnerNotFound(f"No partner {partner_id}.")
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
        await store.update_partner_row(conn, partner_id, row)
        await store.notify_key_change(conn, partner_id)
        await store.insert_terms(
            conn, _terms_row(partner_id, row["terms_version"], row, now, changed_by)
        )
    return await get_partner(engine, partner_id)


async def get_partner(engine: AsyncEngine, partner_id: str) -> PartnerRecord:
    _known_shape(partner_id)
    async with engine.connect() as conn:
        found = await store.load_partners(conn, [partner_id])
    if not found:
        raise PartnerNotFound(f"No partner {partner_id}.")
    return found[0]


async def list_partners(engine: AsyncEngine) -> list[PartnerRecord]:
    async with engine.connect() as conn:
        return await store.load_partners(conn, None)


def _public_key_or_422(text: str) -> bytes:
    """The raw key from its base64url, by the signing profile's one strict decoder
    (`partners.signing.decode_public_key`); what it refuses is a 422 here."""
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
    except DatabaseUnavailable as exc:
        _log.warning("key_check_skipped", error=exc.reason or type(exc).__name__)
    except OSError as exc:
        _log.warning("key_check_skipped", error=type(exc).__name__)


async def revoke_unacceptable_keys(engine: AsyncEngine, clock: Clock) -> list[str]:
    """Revoke every active stored key that the strict decoder would refuse today.

    Keys registered before the small-order check existed (or written to the table by
    other means) could let anyone sign as the partner; at start-up they are revoked and
    logged, so they fail closed (`key_revoked`). Returns the key ids revoked.
    """
    bad = await store.revoke_keys_refused_by(engine, signing.is_acceptable_public_key, clock.now())
    for key_id in bad:
        _log.error("unacceptable_key_revoked", key_id=key_id, reason="small order or non-canonical")
    return bad


async def add_key(engine: AsyncEngine, clock: Clock, partner_id: str, public_key: str) -> KeyInfo:
    """Register a public key; the partner may hold several active keys (rotation)."""
    _known_shape(partner_id)
    raw = _public_key_or_422(public_key)
    key_id = f"key_{secrets.token_hex(12)}"
    now = clock.now()
    async with engine.begin() as conn:
        status = await store.partner_status(conn, partner_id)
        if status is None:
            raise PartnerNotFound(f"No partner {partner_id}.")
        if status == "operator":
            raise Unprocessable("The operator's issuer row cannot hold keys.")
        if status == "terminated":
            raise TerminationFinal(f"Partner {partner_id} has been terminated.")
        await store.insert_key(conn, key_id=key_id, partner_id=partner_id, public_key=raw, now=now)
        await store.notify_key_change(conn, key_id)
    return KeyInfo(key_id, "active", now, None)


async def revoke_key(engine: AsyncEngine, clock: Clock, partner_id: str, key_id: str) -> KeyInfo:
    """Revoke a key at once. Postings it signed stay verifiable (the key is kept)."""
    _known_shape(partner_id, key_id)
    now = clock.now()
    async with engine.begin() as conn:
        key = await store.revoke_key(conn, partner_id, key_id, now)
        if key is not None and key.revoked_at == now:
            # Newly revoked (not a repeat): the event commits with the revocation.
            await webhook_events.key_revoked(conn, partner_id, key_id, now)
        await store.notify_key_change(conn, key_id)
    if key is None:
        raise NotFound(f"Partner {partner_id} has no key {key_id}.")
    return key
