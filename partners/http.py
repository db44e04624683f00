"""The operator API for partners (contract §4): onboarding, terms, status, keys."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from exchange.errors import (
    AlreadyExists,
    NotFound,
    PartnerNotFound,
    TerminationFinal,
    Unprocessable,
)
from exchange.http import decode_body
from exchange.money import format_amount, parse_amount, parse_price
from exchange.openapi import api
from exchange.operators import OperatorIdentity
from exchange.operators.auth import admin_caller, staff_caller
from exchange.schemas import MoneyIn, MoneyOut
from exchange.wiring import Services
from partners import registry
from partners.schemas import KeyCreate, KeyOut, PartnerCreate, PartnerOut, PartnerUpdate

__all__ = ["PartnerAdminController"]

T = TypeVar("T")


def _plain(value: Decimal) -> str:
    """A price as a decimal string without trailing zeros: 0.012000 -> "0.012"."""
    return f"{value.normalize():f}"


def _key_out(key: registry.KeyInfo) -> KeyOut:
    return KeyOut(
        key_id=key.key_id, status=key.status, created_at=key.created_at, revoked_at=key.revoked_at
    )


def _partner_out(record: registry.PartnerRecord) -> PartnerOut:
    limit = None
    if record.credit_limit is not None:
        limit = MoneyOut(
            format_amount(record.credit_limit, record.settlement_currency),
            record.settlement_currency,
        )
    return PartnerOut(
        partner_id=record.partner_id,
        name=record.name,
        settlement_currency=record.settlement_currency,
        status=record.status,
        issue_price=_plain(record.issue_price),
        redemption_value=_plain(record.redemption_value),
        earn_rates={currency: _plain(rate) for currency, rate in sorted(record.earn_rates.items())},
        credit_limit=limit,
        payment_terms_days=record.payment_terms_days,
        tax_note=record.tax_note,
        terms_version=record.terms_version,
        tier_multipliers={tier: _plain(m) for tier, m in sorted(record.tier_multipliers.items())},
        created_at=record.created_at,
        updated_at=record.updated_at,
        keys=[_key_out(key) for key in record.keys],
    )


def _rates(rates: dict[str, str]) -> dict[str, Decimal]:
    return {
        currency: parse_price(rate, what=f"earn_rates.{currency}")
        for currency, rate in rates.items()
    }


def _multipliers(services: Services, multipliers: dict[str, str]) -> dict[str, Decimal]:
    """Earn multipliers per tier (contract §11); only the configured tiers (EXCHANGE_TIERS)."""
    tiers = {name for name, _ in services.settings.tiers}
    unknown = sorted(set(multipliers) - tiers)
    if unknown:
        raise Unprocessable(
            f"tier_multipliers names unknown tiers {', '.join(unknown)}; "
            f"tiers are {', '.join(sorted(tiers))}."
        )
    return {
        tier: parse_price(value, what=f"tier_multipliers.{tier}")
        for tier, value in multipliers.items()
    }


def _limit(money: MoneyIn | None, currency: str) -> Decimal | None:
    if money is None:
        return None
    if money.currency != currency:
        raise Unprocessable(f"credit_limit must be in the settlement currency {currency}.")
    return parse_amount(money.amount, money.currency, what="credit_limit.amount").amount


def _unset_or(value: T | msgspec.UnsetType) -> T | registry.Unchanged:
    return registry.UNCHANGED if value is msgspec.UNSET else value


class PartnerAdminController(Controller):
    path = "/v1/admin/partners"
    tags = ["operator"]

    @post(
        "/",
        status_code=201,
        dependencies={"admin": Provide(admin_caller)},
        summary="Onboard a partner",
        opt=api(
            body=PartnerCreate,
            responses={201: PartnerOut},
            errors=(AlreadyExists,),
            example={
                "partner_id": "grocer",
                "name": "Grocer",
                "settlement_currency": "EUR",
                "issue_price": "0.012",
                "redemption_value": "0.010",
                "earn_rates": {"EUR": "1"},
            },
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        admin: NamedDependency[OperatorIdentity],
        services: NamedDependency[Services],
    ) -> PartnerOut:
        data = decode_body(request, await request.body(), PartnerCreate)
        spec = registry.PartnerSpec(
            partner_id=data.partner_id,
            name=data.name,
            settlement_currency=data.settlement_currency,
            issue_price=parse_price(data.issue_price, what="issue_price"),
            redemption_value=parse_price(data.redemption_value, what="redemption_value"),
            earn_rates=_rates(data.earn_rates),
            credit_limit=_limit(data.credit_limit, data.settlement_currency),
            payment_terms_days=data.payment_terms_days,
            tax_note=data.tax_note,
            tier_multipliers=_multipliers(services, data.tier_multipliers),
        )
        record = await registry.create_partner(
            services.engine, services.clock, spec, changed_by=admin.name
        )
        return _partner_out(record)

    @patch(
        "/{partner_id:str}",
        dependencies={"admin": Provide(admin_caller)},
        summary="Change status or terms",
        opt=api(
            body=PartnerUpdate,
            responses={200: PartnerOut},
            errors=(PartnerNotFound, TerminationFinal),
        ),
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        admin: NamedDependency[OperatorIdentity],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
    ) -> PartnerOut:
        data = decode_body(request, await request.body(), PartnerUpdate)
        current = await registry.get_partner(services.engine, partner_id)
        changes = registry.PartnerChanges(
            name=registry.UNCHANGED if data.name is msgspec.UNSET else data.name,
            status=registry.UNCHANGED if data.status is msgspec.UNSET else data.status,
            issue_price=(
                registry.UNCHANGED
                if data.issue_price is msgspec.UNSET
                else parse_price(data.issue_price, what="issue_price")
            ),
            redemption_value=(
                registry.UNCHANGED
                if data.redemption_value is msgspec.UNSET
                else parse_price(data.redemption_value, what="redemption_value")
            ),
            earn_rates=registry.UNCHANGED
            if data.earn_rates is msgspec.UNSET
            else _rates(data.earn_rates),
            credit_limit=(
                registry.UNCHANGED
                if data.credit_limit is msgspec.UNSET
                else _limit(data.credit_limit, current.settlement_currency)
            ),
            payment_terms_days=_unset_or(data.payment_terms_days),
            tax_note=_unset_or(data.tax_note),
            tier_multipliers=(
                registry.UNCHANGED
                if data.tier_multipliers is msgspec.UNSET
                else _multipliers(services, data.tier_multipliers)
            ),
        )
        record = await registry.update_partner(
            services.engine, services.clock, partner_id, changes, changed_by=admin.name
        )
        services.gateway.forget_keys()  # this process at once; the others by NOTIFY
        return _partner_out(record)

    @get(
        "/",
        dependencies={"staff": Provide(staff_caller)},
        summary="All partners",
        opt=api(),
    )
    async def list_all(
        self,
        staff: NamedDependency[OperatorIdentity],
        services: NamedDependency[Services],
    ) -> list[PartnerOut]:
        return [_partner_out(record) for record in await registry.list_partners(services.engine)]

    @get(
        "/{partner_id:str}",
        dependencies={"staff": Provide(staff_caller)},
        summary="One partner",
        opt=api(responses={200: PartnerOut}, errors=(PartnerNotFound,)),
    )
    async def get_one(
        self,
        request: Request[Any, Any, Any],
        staff: NamedDependency[OperatorIdentity],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
    ) -> PartnerOut:
        return _partner_out(await registry.get_partner(services.engine, partner_id))

    @post(
        "/{partner_id:str}/keys",
        status_code=201,
        dependencies={"admin": Provide(admin_caller)},
        summary="Register a partner's Ed25519 public key",
        opt=api(body=KeyCreate, responses={201: KeyOut}, errors=(PartnerNotFound,)),
    )
    async def add_key(
        self,
        request: Request[Any, Any, Any],
        admin: NamedDependency[OperatorIdentity],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
    ) -> KeyOut:
        data = decode_body(request, await request.body(), KeyCreate)
        key = await registry.add_key(services.engine, services.clock, partner_id, data.public_key)
        services.gateway.forget_keys()  # usable here at once; the others learn by NOTIFY
        return _key_out(key)

    @delete(
        "/{partner_id:str}/keys/{key_id:str}",
        status_code=200,
        dependencies={"admin": Provide(admin_caller)},
        summary="Revoke a key at once",
        opt=api(responses={200: KeyOut}, errors=(PartnerNotFound, NotFound)),
    )
    async def revoke_key(
        self,
        request: Request[Any, Any, Any],
        admin: NamedDependency[OperatorIdentity],
        services: NamedDependency[Services],
        partner_id: FromPath[str],
        key_id: FromPath[str],
    ) -> KeyOut:
        key = await registry.revoke_key(services.engine, services.clock, partner_id, key_id)
        services.gateway.forget_keys()  # this process at once; the others by NOTIFY
        return _key_out(key)
