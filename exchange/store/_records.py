"""Small records and constants shared by the store's modules.

`IdempotencyRecord` is a row of `idempotency_records`; `PostingRequest` is the request's
part of a `postings` row (see `_rows`: array_like, fields in column order)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec

__all__ = [
    "COUNTER_SHARDS",
    "NO_REQUEST",
    "SETTLEMENT_BARRIER_KEY",
    "IdempotencyRecord",
    "PostingRequest",
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


class PostingRequest(msgspec.Struct, frozen=True, array_like=True):
    """What a posting keeps of the request that made it, on its own row (migration 0014):
    the partner's idempotency key with the response stored under it (contract 2.2), and
    the verified signature (`exchange audit` re-verifies it), or the batch whose stored
    signature is the evidence. All None for a posting no request made (expiry, maturing
    points) or made without a key or a signature."""

    idempotency_key: str | None = None
    request_fingerprint: bytes | None = None
    response_status: int | None = None
    response: bytes | None = None
    signature_key_id: str | None = None
    signature_input: str | None = None
    signature: str | None = None
    content_digest: str | None = None
    signature_base: bytes | None = None
    batch_id: str | None = None


NO_REQUEST = PostingRequest()
