"""One submit's working state, and the pure rules applied to each of its requests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from exchange import store
from exchange.errors import (
    ExchangeError,
    PartnerNotFound,
    PartnerSuspended,
    PartnerTerminated,
    Unprocessable,
)
from exchange.ledger import (
    BalanceAfter,
    Context,
    Effect,
    MemberBook,
    OriginalPosting,
    PartnerState,
    apply_due,
    balance_after,
    burn,
    capture_hold,
    earn,
    open_hold,
    points_for_purchase,
    reverse,
    void_hold,
)
from exchange.service._commands import (
    BatchEvidence,
    Burn,
    CaptureHold,
    Command,
    Earn,
    LedgerRequest,
    OpenHold,
    Outcome,
    Render,
    Reverse,
    SignatureProof,
    VoidHold,
)


@dataclass
class PendingBatch:
    """Working state of one submit: which request is about which member, and results."""

    requests: Sequence[LedgerRequest]
    outcomes: list[Outcome | None]
    render: Render
    members: dict[int, str] = field(default_factory=dict)  # request index -> member_id
    originals: dict[uuid.UUID, OriginalPosting] = field(default_factory=dict)
    # posting_id -> the request that made it (key, response, signature), stored on its row
    posting_requests: dict[uuid.UUID, store.PostingRequest] = field(default_factory=dict)
    records: list[store.IdempotencyRecord] = field(default_factory=list)  # keys stored apart
    links: set[tuple[str, str]] = field(default_factory=set)
    after: dict[uuid.UUID, BalanceAfter] = field(default_factory=dict)
    tiers: dict[str, str] = field(default_factory=dict)  # member_id -> tier (multipliers)

    def fail(self, index: int, error: ExchangeError) -> None:
        self.outcomes[index] = Outcome(status_code=error.status, error=error)

    def pending(self) -> list[int]:
        return [index for index, outcome in enumerate(self.outcomes) if outcome is None]


def apply_rule(
    batch: PendingBatch,
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
        if partner.terms.terminated:
            raise PartnerTerminated(f"Partner {command.partner_id} has been terminated.")
        if not partner.terms.active:
            raise PartnerSuspended(f"Partner {command.partner_id} is suspended.")
        apply_due(book, ctx)
        effect = _execute(batch, book, partner, command, ctx)
    except ExchangeError as error:
        batch.fail(index, error)
        return
    posting = effect.posting
    after = balance_after(book, ctx.now)
    batch.after[posting.posting_id] = after
    # The answer is rendered now so that it is stored with the key in this database
    # transaction: a replay returns these exact bytes.
    status, body = batch.render(effect, after)
    batch.outcomes[index] = Outcome(status, body)
    if isinstance(command, Earn | Burn | OpenHold):
        batch.links.add((book.member_id, command.partner_id))
    keyed = request.idempotency
    if keyed is not None and command.partner_id != posting.partner_id:
        # A key whose owner is not the posting's partner cannot sit on the posting.
        batch.records.append(
            store.IdempotencyRecord(
                command.partner_id, keyed.key, keyed.fingerprint, status, body, posting.posting_id
            )
        )
        keyed = None
    evidence = request.signature
    proof = evidence if isinstance(evidence, SignatureProof) else None
    batch.posting_requests[posting.posting_id] = store.PostingRequest(
        idempotency_key=keyed.key if keyed else None,
        request_fingerprint=keyed.fingerprint if keyed else None,
        response_status=status if keyed else None,
        response=body if keyed else None,
        signature_key_id=proof.key_id if proof else None,
        signature_input=proof.signature_input if proof else None,
        signature=proof.signature if proof else None,
        content_digest=proof.content_digest if proof else None,
        signature_base=proof.signature_base if proof else None,
        batch_id=evidence.batch_id if isinstance(evidence, BatchEvidence) else None,
    )


def _execute(
    batch: PendingBatch, book: MemberBook, partner: PartnerState, command: Command, ctx: Context
) -> Effect:
    """Apply one command with the pure rules."""
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
            return earn(
                book,
                ctx,
                partner,
                points,
                reference=command.reference,
                available_at=command.available_at,
                expires_at=command.expires_at,
                purchase=(command.purchase.amount, command.purchase.currency)
                if command.purchase is not None
                else None,
            )
        case Burn():
            return burn(book, ctx, partner, command.points, reference=command.reference)
        case OpenHold():
            return open_hold(
                book,
                ctx,
                partner,
                command.points,
                reference=command.reference,
                expires_in_s=command.expires_in_s,
            )
        case CaptureHold():
            return capture_hold(book, ctx, partner, command.hold_id, command.points)
        case VoidHold():
            return void_hold(book, ctx, command.hold_id)
        case Reverse():
            original = batch.originals[command.transaction_id]
            return reverse(
                book, ctx, partner, original, command.points, reference=command.reference
            )
