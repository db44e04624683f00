"""Money and prices: Decimal only, validated against each currency's minor unit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from exchange.errors import Unprocessable

__all__ = [
    "MINOR_UNITS",
    "PRICE_DECIMALS_MAX",
    "Money",
    "format_amount",
    "minor_unit",
    "parse_amount",
    "parse_price",
    "round_money",
]

# ISO 4217 minor units of the currencies partners settle or earn in. Extend as needed.
MINOR_UNITS: dict[str, int] = {
    "AED": 2,
    "AUD": 2,
    "BHD": 3,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CNY": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "HUF": 2,
    "INR": 2,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "MXN": 2,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PLN": 2,
    "RON": 2,
    "SAR": 2,
    "SEK": 2,
    "SGD": 2,
    "TND": 3,
    "TRY": 2,
    "USD": 2,
    "ZAR": 2,
}
PRICE_DECIMALS_MAX = 6
_DECIMAL = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str


def minor_unit(currency: str) -> int:
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise Unprocessable(f"Unknown or unsupported currency {currency!r}.") from None


def _decimal(text: str, what: str) -> Decimal:
    if not _DECIMAL.fullmatch(text):
        raise Unprocessable(f'{what} must be a non-negative decimal string such as "12.34".')
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes this
        raise Unprocessable(f"{what} is not a decimal number.") from None


def parse_amount(text: str, currency: str, *, what: str = "amount") -> Money:
    """A money amount: a decimal string with no more decimals than the currency allows."""
    unit = minor_unit(currency)
    value = _decimal(text, what)
    exponent = value.as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if decimals > unit:
        raise Unprocessable(f"{what} {text} has {decimals} decimals; {currency} allows {unit}.")
    return Money(value, currency)


def parse_price(text: str, *, what: str = "price") -> Decimal:
    """A price per point: a decimal string with up to 6 decimals."""
    value = _decimal(text, what)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > PRICE_DECIMALS_MAX:
        raise Unprocessable(f"{what} {text} has more than {PRICE_DECIMALS_MAX} decimals.")
    return value


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round once, half-even, to the currency's minor unit."""
    return amount.quantize(Decimal(1).scaleb(-minor_unit(currency)), rounding=ROUND_HALF_EVEN)


def format_amount(amount: Decimal, currency: str) -> str:
    """An amount as the contract writes it: exactly the currency's decimals."""
    return f"{round_money(amount, currency):f}"
