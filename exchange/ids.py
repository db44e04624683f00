r"""External ids: opaque strings with a type prefix over the internal UUIDs.

Every id that arrives in a path, a query or a body is checked against the exact shape
the exchange mints (`*_SHAPE`, used with `fullmatch`, and the `\A...\Z` patterns of the
wire structs), so a NUL byte, a control character or a 10 KB string never reaches
PostgreSQL: it is a 404 (a path naming nothing that can exist) or a 422 (a field).
"""

from __future__ import annotations

import re
import uuid

from exchange.ledger import new_id

__all__ = [
    "KEY_ID_SHAPE",
    "MEMBER_ID_PATTERN",
    "MEMBER_ID_SHAPE",
    "PARTNER_ID_SHAPE",
    "RUN_ID_SHAPE",
    "format_hold_id",
    "format_transaction_id",
    "new_member_id",
    "parse_hold_id",
    "parse_transaction_id",
]

_HEX32 = re.compile(r"[0-9a-f]{32}")
# new_member_id(): "mem_" and a UUID's 32 hex digits.
MEMBER_ID_PATTERN = r"\Amem_[0-9a-f]{32}\Z"
MEMBER_ID_SHAPE = re.compile(MEMBER_ID_PATTERN)
# Partner ids are slugs chosen by the operator (partners.registry validates new ones).
PARTNER_ID_SHAPE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# partners.registry.add_key: "key_" and 12 random bytes in hex.
KEY_ID_SHAPE = re.compile(r"key_[0-9a-f]{24}")
# settlement.service.run_id_for: "stl_" and the period end, to the microsecond.
RUN_ID_SHAPE = re.compile(r"stl_[0-9]{8}T[0-9]{6}(?:\.[0-9]{6})?Z")


def _format(prefix: str, value: uuid.UUID) -> str:
    return f"{prefix}{value.hex}"


def _parse(prefix: str, text: str) -> uuid.UUID | None:
    if not text.startswith(prefix):
        return None
    body = text[len(prefix) :]
    return uuid.UUID(hex=body) if _HEX32.fullmatch(body) else None


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
