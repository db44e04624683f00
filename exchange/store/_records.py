"""Small records and constants shared by both halves of the store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    partner_id: str
    key: str
    fingerprint: bytes
    status_code: int
    response: bytes
    posting_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class SignatureRecord:
    posting_id: uuid.UUID
    key_id: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes
