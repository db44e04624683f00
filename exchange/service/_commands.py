"""What callers hand the ledger service, and what they get back."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import msgspec

from exchange.errors import ExchangeError
from exchange.ledger import BalanceAfter, Effect, Posting, PostingType
from exchange.money import Money
from exchange.store import Connection

__all__ = [
    "Burn",
    "CaptureHold",
    "Command",
    "Earn",
    "Idempotency",
    "LedgerRequest",
    "NonceClaim",
    "OpenHold",
    "Outcome",
    "Record",
    "Render",
    "Reverse",
    "SignatureProof",
    "SweepResult",
    "VoidHold",
]


@dataclass
class SweepResult:
    """What one sweep posted."""

    members: int = 0
    expired_points: int = 0
    matured_points: int = 0
    released_holds: int = 0

    def count(self, postings: Sequence[Posting]) -> None:
        for posting in postings:
            if posting.type is PostingType.EXPIRY:
                self.expired_points += posting.points
            elif posting.type is PostingType.MATURATION:
                self.matured_points += posting.points
            elif posting.type is PostingType.HOLD_RELEASE:
                self.released_holds += 1


class Earn(msgspec.Struct, frozen=True):
    partner_id: str
    member_id: str
    reference: str
    points: int | None = None
    purchase: Money | None = None
    available_at: datetime | None = None
    expires_at: datetime | None = None


class Burn(msgspec.Struct, frozen=True):
    partner_id: str
    member_id: str
    points: int
    reference: str | None = None


class OpenHold(msgspec.Struct, frozen=True):
    partner_id: str
    member_id: str
    points: int
    reference: str | None = None
    expires_in_s: int = 900


class CaptureHold(msgspec.Struct, frozen=True):
    partner_id: str
    hold_id: uuid.UUID
    points: int | None = None


class VoidHold(msgspec.Struct, frozen=True):
    partner_id: str
    hold_id: uuid.UUID


class Reverse(msgspec.Struct, frozen=True):
    partner_id: str
    transaction_id: uuid.UUID
    points: int | None = None
    reference: str | None = None


Command = Earn | Burn | OpenHold | CaptureHold | VoidHold | Reverse


class Idempotency(msgspec.Struct, frozen=True):
    key: str
    fingerprint: bytes  # sha256 over method, path and body


class SignatureProof(msgspec.Struct, frozen=True):
    """The verified signature of the request, kept with the posting for later disputes."""

    key_id: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes


class BatchEvidence(msgspec.Struct, frozen=True):
    """A batch item's evidence: the verified signature of the file it came in, stored once
    with its batch (`batches`) and named by each of its postings, not copied onto each."""

    batch_id: str


class NonceClaim(msgspec.Struct, frozen=True):
    """A signature's (keyid, nonce), written in the posting's own database transaction.

    `seen_at` is max(arrival, created): the row must outlive the signature's window (see
    `partners.auth`). A pair already stored, or claimed earlier in the same batch, makes
    the request `NonceReplayed` before anything else about it is looked at; a request
    refused for any other reason still consumes its nonce (the batch commits it)."""

    key_id: str
    nonce: str
    seen_at: datetime


class LedgerRequest(msgspec.Struct, frozen=True):
    command: Command
    idempotency: Idempotency | None = None
    # The evidence kept with the posting: the request's verified signature, or for a batch
    # item its batch, whose stored signature covers the whole file.
    signature: SignatureProof | BatchEvidence | None = None
    nonce: NonceClaim | None = None


class Outcome(msgspec.Struct, frozen=True):
    """What to answer: a stored or new response, or an error (which changed nothing)."""

    status_code: int = 0
    body: bytes = b""
    replayed: bool = False
    error: ExchangeError | None = None


Render = Callable[[Effect, BalanceAfter], tuple[int, bytes]]
"""How the HTTP layer answers an operation: (status code, body) from its effect and the
member's balance after it. The service calls it inside the database transaction and
stores the answer with the idempotency key, so a replay returns the exact bytes."""

Record = Callable[[Connection, Sequence[LedgerRequest], Sequence[Outcome]], Awaitable[None]]
"""A caller's own rows, written in the ledger's database transaction after its write, from
the requests and their outcomes (in order): they commit with the postings or not at all.
An `ExchangeError` it raises rolls the transaction back; the group committer then splits
the requests as for any failure, and the error becomes a lone request's outcome. A batch
item's result is recorded so (`exchange.batches`): the result is the item's record."""
