"""Adjustments with four eyes: one operator token requests, a different one approves.

    request   validate (member, issuer, sign, enough points for a debit), store it
              `pending` with the requester, under the operator Idempotency-Key (§2.2)
    approve   lock the adjustment; posted already -> the same answer again; the
              requester's own token -> four_eyes_required; past its 7 days -> `expired`
              (stored) and 409; else, in ONE database transaction with the ledger's
              barrier and member lock: apply the pure `adjust` rule, write the posting
              with the ledger's batch writer, and mark the adjustment posted

Operator idempotency keys are scoped to the reserved `operator` row (the same table and
rules as partners' keys): a key names one request whichever operator token sent it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange import schemas, store
from exchange.clock import Clock
from exchange.db import driver_connection
from exchange.errors import (
    AdjustmentNotFound,
    AdjustmentNotPending,
    FourEyesRequired,
    InsufficientPoints,
    MemberNotFound,
    ServiceUnavailable,
    Unprocessable,
)
from exchange.ids import format_transaction_id, new_adjustment_id, new_id
from exchange.ledger import Context, PartnerState, adjust, apply_due, balance_after
from exchange.logs import get_logger
from exchange.service._commands import Idempotency, Outcome
from exchange.service._idempotency import remember, replay_or_claim
from exchange.service._ledger import LedgerService
from exchange.store import Connection

__all__ = [
    "ADJUSTMENT_PENDING_DAYS",
    "OPERATOR_SCOPE",
    "AdjustmentService",
    "Approver",
    "adjustment_view",
]

ADJUSTMENT_PENDING_DAYS = 7
OPERATOR_SCOPE = "operator"  # the reserved partners row (migration 0006)
RETRIES_MAX = 5
PENDING_SHOWN_MAX = 200
_log = get_logger("adjustments")


@dataclass(frozen=True, slots=True)
class Approver:
    """An operator token, as the audit trail names it."""

    token_id: str
    name: str


def adjustment_view(row: store.AdjustmentRow) -> schemas.Adjustment:
    return schemas.Adjustment(
        adjustment_id=row.adjustment_id,
        status=row.status,
        member_id=row.member_id,
        points=row.points,
        issuer=row.issuer_id,
        reason=row.reason,
        requested_by=row.requested_by,
        requested_at=row.requested_at,
        expires_at=row.expires_at,
        approved_by=row.approved_by if row.approved_by is not None else msgspec.UNSET,
        approved_at=row.approved_at if row.approved_at is not None else msgspec.UNSET,
        transaction_id=(format_transaction_id(row.posting_id) if row.posting_id else msgspec.UNSET),
    )


class AdjustmentService:
    def __init__(self, engine: AsyncEngine, clock: Clock, ledger: LedgerService) -> None:
        self.engine = engine
        self.clock = clock
        self.ledger = ledger

    async def request(
        self, requester: Approver, data: schemas.AdjustmentCreate, idempotency: Idempotency
    ) -> Outcome:
        """Store a pending adjustment (201), or replay the key's first answer."""
        if data.points == 0:
            raise Unprocessable("points must not be 0: + credits the member, - debits.")
        async with driver_connection(self.engine) as conn, store.transaction(conn):
            with store.translate_errors():
                earlier = await replay_or_claim(conn, OPERATOR_SCOPE, idempotency)
                if earlier is not None:
                    return earlier
                await self._validate(conn, data)
                now = self.clock.now()
                row = store.AdjustmentRow(
                    adjustment_id=new_adjustment_id(),
                    member_id=data.member_id,
                    issuer_id=data.issuer,
                    points=data.points,
                    reason=data.reason,
                    status="pending",
                    requested_by=requester.name,
                    requested_token_id=requester.token_id,
                    requested_at=now,
                    expires_at=now + timedelta(days=ADJUSTMENT_PENDING_DAYS),
                    approved_by=None,
                    approved_token_id=None,
                    approved_at=None,
                    posting_id=None,
                )
                await store.insert_adjustment(conn, row)
                body = msgspec.json.encode(adjustment_view(row))
                await remember(
                    conn, OPERATOR_SCOPE, idempotency=idempotency, status_code=201, body=body
                )
        _log.info(
            "adjustment_requested",
            adjustment_id=row.adjustment_id,
            member_id=row.member_id,
            points=row.points,
            issuer=row.issuer_id,
            requested_by=requester.name,
        )
        return Outcome(201, body)

    async def _validate(self, conn: Connection, data: schemas.AdjustmentCreate) -> None:
        if not await store.member_exists(conn, data.member_id):
            raise MemberNotFound(f"No member {data.member_id}.")
        status = await store.adjustment_partner_status(conn, data.issuer)
        if status is None:
            raise Unprocessable(f"issuer {data.issuer!r} is neither a partner nor 'operator'.")
        if data.points > 0 and status == "terminated":
            raise Unprocessable(
                f"Partner {data.issuer} has been terminated: it cannot issue new points."
            )
        if data.points < 0:
            available = (await self.ledger.read_balance(data.member_id)).available
            if -data.points > available:
                raise InsufficientPoints(f"{available} points available, {-data.points} asked.")

    async def get(self, adjustment_id: str) -> store.AdjustmentRow:
        async with driver_connection(self.engine) as conn:
            row = await store.fetch_adjustment(conn, adjustment_id)
        if row is None:
            raise AdjustmentNotFound(f"No adjustment {adjustment_id}.")
        return row

    async def pending(self, limit: int = PENDING_SHOWN_MAX) -> list[store.AdjustmentRow]:
        """Pending adjustments, oldest first; one past their 7 days is listed until an
        approval attempt marks it expired (the console shows its expires_at)."""
        async with driver_connection(self.engine) as conn:
            return await store.pending_adjustments(conn, limit)

    async def approve(self, approver: Approver, adjustment_id: str) -> store.AdjustmentRow:
        """Post the adjustment (see the module docstring); approving twice answers the same."""
        for attempt in range(RETRIES_MAX):
            try:
                async with driver_connection(self.engine) as conn:
                    with store.translate_errors():
                        async with store.transaction(conn):
                            outcome = await self._approve(conn, approver, adjustment_id)
                break
            except store.RetryableConflict:
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        else:
            raise ServiceUnavailable("The ledger is busy; approve again.")
        if isinstance(outcome, datetime):  # expired: stored as such, then refused
            raise AdjustmentNotPending(
                f"Adjustment {adjustment_id} expired unapproved at "
                f"{outcome:%Y-%m-%dT%H:%M:%SZ}; request it again."
            )
        return outcome

    async def _approve(
        self, conn: Connection, approver: Approver, adjustment_id: str
    ) -> store.AdjustmentRow | datetime:
        await store.enter_settlement_barrier(conn)  # shared, like every posting
        row = await store.lock_adjustment(conn, adjustment_id)
        if row is None:
            raise AdjustmentNotFound(f"No adjustment {adjustment_id}.")
        if row.status == "posted":
            return row
        if row.requested_token_id == approver.token_id:
            raise FourEyesRequired(
                f"{approver.name} requested this adjustment; another operator must approve it."
            )
        now = self.clock.now()
        if row.status == "expired" or now >= row.expires_at:
            await store.mark_adjustment_expired(conn, adjustment_id)
            return row.expires_at
        posting_id = await self._post(conn, row, now)
        posted = await store.mark_adjustment_posted(
            conn,
            adjustment_id,
            approved_by=approver.name,
            approved_token_id=approver.token_id,
            approved_at=now,
            posting_id=posting_id,
        )
        _log.info(
            "adjustment_posted",
            adjustment_id=adjustment_id,
            requested_by=row.requested_by,
            approved_by=approver.name,
            points=row.points,
            issuer=row.issuer_id,
        )
        return posted

    async def _post(self, conn: Connection, row: store.AdjustmentRow, now: datetime) -> uuid.UUID:
        locked = await store.lock_members(conn, [row.member_id], partner_ids=[row.issuer_id])
        debts = locked.debts
        if row.member_id not in debts:
            raise MemberNotFound(f"No member {row.member_id}.")
        terms = await store.lock_credit_limited(conn, locked.terms)
        issuer = PartnerState(terms[row.issuer_id])
        if row.points > 0 and issuer.terms.terminated:  # terminated since the request
            raise Unprocessable(
                f"Partner {row.issuer_id} has been terminated: it cannot issue new points."
            )
        books, closed_until = await store.load_books(conn, debts)
        book = books[row.member_id]
        ctx = Context(
            now=now, closed_until=closed_until, points_ttl=self.ledger.points_ttl, ids=new_id
        )
        apply_due(book, ctx)
        posting = adjust(book, ctx, issuer, row.points, reference=row.adjustment_id)
        write = store.BatchWrite()
        write.add_books([book], {posting.posting_id: balance_after(book, now)})
        await store.write_batch(conn, write)
        return posting.posting_id
