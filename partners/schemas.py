"""Wire structs of the operator API for partners (contract §4)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from exchange.schemas import CurrencyCode, DecimalText, MoneyIn, MoneyOut

__all__ = ["KeyCreate", "KeyOut", "PartnerCreate", "PartnerOut", "PartnerUpdate"]

Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
PaymentTermsDays = Annotated[int, msgspec.Meta(ge=0, le=365)]
TaxNote = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class _In(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class PartnerCreate(_In, frozen=True):
    partner_id: Slug
    name: Name
    settlement_currency: CurrencyCode
    issue_price: DecimalText
    redemption_value: DecimalText
    earn_rates: dict[CurrencyCode, DecimalText] = {}
    credit_limit: MoneyIn | None = None
    payment_terms_days: PaymentTermsDays = 14  # settlement documents fall due after these
    tax_note: TaxNote | None = None  # printed on settlement documents; no VAT is computed
    tier_multipliers: dict[str, DecimalText] = {}


class PartnerUpdate(_In, frozen=True):
    name: Name | msgspec.UnsetType = msgspec.UNSET
    status: Literal["active", "suspended", "terminated"] | msgspec.UnsetType = msgspec.UNSET
    issue_price: DecimalText | msgspec.UnsetType = msgspec.UNSET
    redemption_value: DecimalText | msgspec.UnsetType = msgspec.UNSET
    earn_rates: dict[CurrencyCode, DecimalText] | msgspec.UnsetType = msgspec.UNSET
    credit_limit: MoneyIn | msgspec.UnsetType | None = msgspec.UNSET  # null removes the limit
    payment_terms_days: PaymentTermsDays | msgspec.UnsetType = msgspec.UNSET
    tax_note: TaxNote | msgspec.UnsetType | None = msgspec.UNSET  # null removes the note
    tier_multipliers: dict[str, DecimalText] | msgspec.UnsetType = msgspec.UNSET


class KeyCreate(_In, frozen=True):
    # base64url (RFC 4648 §5) of the raw 32 bytes; the registry's strict decoder checks
    # the spelling and the point (partners.signing.decode_public_key).
    public_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class KeyOut(msgspec.Struct, frozen=True, omit_defaults=True):
    key_id: str
    status: str
    created_at: datetime
    revoked_at: datetime | None = None


class PartnerOut(msgspec.Struct, frozen=True):
    partner_id: str
    name: str
    settlement_currency: str
    status: str
    issue_price: str
    redemption_value: str
    earn_rates: dict[str, str]
    credit_limit: MoneyOut | None
    payment_terms_days: int
    tax_note: str | None
    terms_version: int
    tier_multipliers: dict[str, str]
    created_at: datetime
    updated_at: datetime
    keys: list[KeyOut]
