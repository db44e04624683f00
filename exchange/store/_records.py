"""Small records and constants shared by the store's modules.

`IdempotencyRecord` and `SignatureRecord` are the rows of `idempotency_keys` and
`posting_signatures` (see `_rows`: array_like, fields in column order)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

__all__ = [
    "COUNTER_SHARDS",
    "SETTLEMENT_BARRIER_KEY",
    "IdempotencyRecord",
    "SignatureRecord",
    "StoredResponse",
]

SETTLEMENT_BARRIER_KEY = 0x5E77_1E00_0001
# Each database connection adds to its own counter row per partner (pg_backend_pid() %
# COUNTER_SHARDS), so concurrent batches for one big partner rarely meet on a row lock.
COUNTER_SHARDS = 64


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: bytes
    status_code: int
    response: bytes


class IdempotencyRecord(msgspec.Struct, frozen=True, array_like=True):
    """A stored response under its key. `partner_id` is the key's owner: the partner (or
    the reserved `operator` row), or the member for member-scoped keys."""

    partner_id: str
    key: str
    fingerprint: bytes
    status_code: int
    response: bytes
    posting_id: uuid.UUID | None


class SignatureRecord(msgspec.Struct, frozen=True, array_like=True):
    posting_id: uuid.UUID
    key_id: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes
