"""One submit's working state, and the pure rules applied to each of its requests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from exchange import store
from exchange.errors import ExchangeError, PartnerNotFound, PartnerSuspended, Unprocessable
from exchange.ledger import (
    Balance,
    Context,
    MemberBook,
    OriginalPosting,
    PartnerState,
    Posting,
    PostingType,
    balance,
    burn,
    capture_hold,
    earn,
    open_hold,
    points_for_purchase,
    reverse,
    settle_due,
    void_hold,
)
from exchange.service._commands import (
    Burn,
    CaptureHold,
    Command,
    Earn,
    LedgerRequest,
    OpenHold,
    Outcome,
    Reverse,
    VoidHold,
)
from exchange.views import hold_view, transaction_view


@dataclass
class _Batch:
    """Working state of one submit: which request is about which member, and results."""

    requests: Sequence[LedgerRequest]
    outcomes: list[Outcome | None]
    members: dict[int, str] = field(default_factory=dict)  # request index -> member_id
    originals: dict[uuid.UUID, OriginalPosting] = field(default_factory=dict)
    records: list[store.IdempotencyRecord] = field(default_factory=list)
    signatures: list[store.SignatureRecord] = field(default_factory=list)
    links: set[tuple[str, str]] = field(default_factory=set)
    after: dict[uuid.UUID, Balance] = field(default_factory=dict)
    tiers: dict[str, str] = field(default_factory=dict)  # member_id -> tier (multipliers)

    def fail(self, index: int, error: ExchangeError) -> None:
        self.outcomes[index] = Outcome(status_code=error.status, error=error)

    def pending(self) -> list[int]:
        return [index for index, outcome in enumerate(self.outcomes) if outcome is None]


def _apply(
    batch: _Batch,
    index: int,
    book: MemberBook,
    partners: dict[str, PartnerState],
    ctx: Context,
) -> None:
    request = batch.requests[index]
    command = request.command
    partner = partners.get(command.partner_id)
    try:
        if partner is None:
            raise PartnerNotFound(f"No partner {command.partner_id}.")
        if not partner.terms.active:
            raise PartnerSuspended(f"Partner {command.partner_id} is suspended.")
        settle_due(book, ctx)
        status, body, posting = _execute(batch, book, partner, command, ctx)
    except ExchangeError as error:
        batch.fail(index, error)
        return
    batch.outcomes[index] = Outcome(status, body)
    if isinstance(command, Earn | Burn | OpenHold):
        batch.links.add((book.member_id, command.partner_id))
    if request.idempotency is not None:
        batch.records.append(
            store.IdempotencyRecord(
                command.partner_id,
                request.idempotency.key,
                request.idempotency.fingerprint,
                status,
                body,
                posting.posting_id,
            )
        )
    if request.signature is not None:
        proof = request.signature
        batch.signatures.append(
            store.SignatureRecord(
                posting.posting_id,
                proof.key_id,
                proof.signature_input,
                proof.signature,
                proof.content_digest,
                proof.signature_base,
            )
        )


def _execute(
    batch: _Batch, book: MemberBook, partner: PartnerState, command: Command, ctx: Context
) -> tuple[int, bytes, Posting]:
    """Apply one command with the pure rules; return (status, response body, posting)."""
    before = len(book.postings)
    hold = None
    match command:
        case Earn():
            points = command.points
            if points is None and command.purchase is not None:
                points = points_for_purchase(
                    command.purchase.amount,
                    command.purchase.currency,
                    partner.terms,
                    batch.tiers.get(book.member_id),
                )
            if points is None:
                raise Unprocessable("Give either points or purchase.")
            posting = earn(
                book,
                ctx,
                partner,
                points,
                reference=command.reference,
                available_at=command.available_at,
                expires_at=command.expires_at,
            )
        case Burn():
            posting = burn(book, ctx, partner, command.points, reference=command.reference)
        case OpenHold():
            hold = open_hold(
                book,
                ctx,
                partner,
                command.points,
                reference=command.reference,
                expires_in_s=command.expires_in_s,
            )
        case CaptureHold():
            capture_hold(book, ctx, partner, command.hold_id, command.points)
            hold = book.holds[command.hold_id]
        case VoidHold():
            hold = void_hold(book, ctx, command.hold_id)
        case Reverse():
            original = batch.originals[command.transaction_id]
            posting = reverse(
                book, ctx, partner, original, command.points, reference=command.reference
            )
    main = (
        next(p for p in book.postings[before:] if p.type is not PostingType.EXPIRY)
        if hold
        else posting
    )
    after = balance(book, ctx.now)
    batch.after[main.posting_id] = after
    if hold is not None:
        status = 201 if isinstance(command, OpenHold) else 200
        return status, msgspec.json.encode(hold_view(hold)), main
    return 201, msgspec.json.encode(transaction_view(main, after)), main
