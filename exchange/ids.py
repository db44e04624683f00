"""External ids: opaque strings with a type prefix over the internal UUIDs."""

from __future__ import annotations

import re
import uuid

from exchange.ledger import new_id

__all__ = [
    "format_hold_id",
    "format_transaction_id",
    "new_adjustment_id",
    "new_member_id",
    "parse_hold_id",
    "parse_transaction_id",
]

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _format(prefix: str, value: uuid.UUID) -> str:
    return f"{prefix}{value.hex}"


def _parse(prefix: str, text: str) -> uuid.UUID | None:
    if not text.startswith(prefix):
        return None
    body = text[len(prefix) :]
    return uuid.UUID(hex=body) if _HEX32.match(body) else None


def format_transaction_id(value: uuid.UUID) -> str:
    return _format("txn_", value)


def parse_transaction_id(text: str) -> uuid.UUID | None:
    return _parse("txn_", text)


def format_hold_id(value: uuid.UUID) -> str:
    return _format("hold_", value)


def parse_hold_id(text: str) -> uuid.UUID | None:
    return _parse("hold_", text)


def new_member_id() -> str:
    return _format("mem_", new_id())


def new_adjustment_id() -> str:
    return _format("adj_", new_id())
