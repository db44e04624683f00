"""The partner and member API (contract §3, §5): thin controllers.

Each handler authenticates (a dependency), decodes the raw body into a strict struct,
calls one service function, and returns its response. Posting responses are the exact
bytes stored with the idempotency key, so a replay is byte-for-byte the original.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter

from exchange import metrics, schemas
from exchange.errors import (
    BadRequest,
    CreditLimitExceeded,
    CurrencyNotSupported,
    ExchangeError,
    HoldNotFound,
    HoldNotOpen,
    InsufficientPoints,
    MemberNotFound,
    NonceReplayed,
    NotReversible,
    ReversalExceedsOriginal,
    TransactionNotFound,
    Unprocessable,
    UnsupportedMediaType,
)
from exchange.ids import MEMBER_ID_SHAPE, parse_hold_id, parse_transaction_id
from exchange.ledger import PARTNER_TRANSACTION_TYPES, PostingType
from exchange.members.auth import Caller, MemberCaller, member_caller, member_or_partner_caller
from exchange.members.service import tier_view
from exchange.money import MINOR_UNITS, parse_amount
from exchange.openapi import api
from exchange.service import (
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
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
from exchange.views import balance_view
from exchange.wiring import Services
from partners.auth import (
    NONCE_IN_POSTING,
    NONCE_IN_READ,
    PartnerCaller,
    partner_caller,
    spend_nonce,
)
from partners.sessions import create_member_session

__all__ = [
    "BalanceController",
    "MemberController",
    "PartnerController",
    "decode_body",
    "respond",
    "wire_time",
]

T = TypeVar("T")
Limit = Annotated[int, QueryParameter(ge=1, le=PAGE_SIZE_MAX)]
_MEMBER_HISTORY_TYPES = (
    *sorted(PARTNER_TRANSACTION_TYPES),
    PostingType.EXPIRY.value,
    PostingType.ADJUSTMENT.value,
    PostingType.TRANSFER_OUT.value,
    PostingType.TRANSFER_IN.value,
)


def _query_time(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 time from the query string (any offset); a naive or bad one is 422."""
    if value is None:
        return None
    try:
        # An unencoded "+02:00" offset arrives as " 02:00" (form decoding): undo that.
        moment = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        raise Unprocessable(
            f"{name} must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z."
        ) from None
    if moment.tzinfo is None:
        raise Unprocessable(f"{name} needs a UTC offset (e.g. Z).")
    return moment


def decode_body(request: Request[Any, Any, Any], body: bytes, into: type[T]) -> T:
    """Strict decoding of a JSON body: unknown fields, wrong types, absurd numbers → 422."""
    if not body.strip():
        body = b"{}"
    else:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType(f"Content-Type is {media_type or 'missing'}.")
    try:
        decoded = msgspec.json.decode(body, type=into)
    except msgspec.ValidationError as exc:
        raise Unprocessable(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    _refuse_duplicate_keys(body)
    return decoded


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise _DuplicateKey(name)
        found[name] = value
    return found


def _refuse_duplicate_keys(body: bytes) -> None:
    """The signed bytes must mean one thing: `{"points": 1, "points": 900}` is refused
    (422), never read as its last value. Fast path (~5 us): re-encoding the decoded value
    gives the compact form of the body unless a key was dropped (or the body spells a
    string or number differently, e.g. with escapes); only then is it parsed again
    with the standard library, which sees every key."""
    if msgspec.json.encode(msgspec.json.decode(body)) == msgspec.json.format(body, indent=-1):
        return
    try:
        json.loads(body, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        raise Unprocessable(f"The body names {str(exc)!r} more than once.") from None


# Times a request may carry: anything outside is a typo or a probe. (Year 1 with a +14:00
# offset, or year 9999 with -23:59, cannot even be converted to UTC.)
_TIME_MIN = datetime(2000, 1, 1, tzinfo=UTC)
_TIME_MAX = datetime(2200, 1, 1, tzinfo=UTC)


def wire_time(value: datetime, what: str) -> datetime:
    """A time from a request body, in UTC, within 2000-2199; 422 otherwise."""
    try:
        moment = value.astimezone(UTC)
    except (OverflowError, ValueError):
        moment = None
    if moment is None or not _TIME_MIN <= moment < _TIME_MAX:
        raise Unprocessable(f"{what} must be between {_TIME_MIN:%Y} and {_TIME_MAX:%Y} (UTC).")
    return moment


def _optional_time(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else wire_time(value, what)


def respond(outcome: Outcome) -> Response[Any]:
    if outcome.error is not None:
        raise outcome.error
    headers = {"Idempotency-Replayed": "true"} if outcome.replayed else None
    return Response(
        content=outcome.body,
        status_code=outcome.status_code,
        media_type="application/json",
        headers=headers,
    )


# A posting route: its nonce is written in the posting's own database transaction.
_POSTING = {NONCE_IN_POSTING: True}


async def _post(
    services: Services, partner: PartnerCaller, build: Callable[[], Command]
) -> Response[Any]:
    """Build the command from the request (validation) and post it with the signature's
    nonce. A request refused before the ledger took it still spends its nonce; a 503
    (nothing was written) does not: its signature may be sent again, and the
    Idempotency-Key keeps that to one posting."""
    try:
        request = LedgerRequest(build(), partner.idempotency, partner.proof, partner.nonce)
        outcome = await services.post(request)
    except ExchangeError as refusal:
        if refusal.status >= 500:
            raise
        await spend_nonce(services, partner.nonce, refusal)
    if isinstance(outcome.error, NonceReplayed):
        metrics.SIGNATURE_FAILURES.labels(NonceReplayed.code).inc()
    return respond(outcome)


def _hold_id(text: str) -> Any:
    hold_id = parse_hold_id(text)
    if hold_id is None:
        raise HoldNotFound()
    return hold_id


def _member_id(text: str) -> str:
    """A member id from a path: one the exchange could have minted, else no such member."""
    if not MEMBER_ID_SHAPE.fullmatch(text):
        raise MemberNotFound("No member has that id.")
    return text


def _query_filter(value: str | None, shape: re.Pattern[str], what: str) -> str | None:
    """A query filter of the field's own format (a NUL or a control character never
    reaches PostgreSQL); 422 otherwise."""
    if value is not None and not shape.fullmatch(value):
        raise Unprocessable(f"{what} is not a valid {what}.")
    return value


_REFERENCE_SHAPE = re.compile(schemas.REFERENCE_PATTERN)
_CURSOR_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _transaction_id(text: str) -> Any:
    transaction_id = parse_transaction_id(text)
    if transaction_id is None:
        raise TransactionNotFound()
    return transaction_id


class EmptyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A body that must be empty or `{}`."""


def _earn_command(request: Request[Any, Any, Any], partner: PartnerCaller) -> Earn:
    data = decode_body(request, partner.body, schemas.EarnCreate)
    if data.points is None and data.purchase is None:
        raise Unprocessable("Give points, or a purchase to compute them from.")
    purchase = None
    if data.purchase is not None:
        if data.purchase.currency not in MINOR_UNITS:
            # A currency the exchange does not know cannot have an earn rate either.
            raise CurrencyNotSupported(
                f"No earn rate for {data.purchase.currency}: the exchange does not "
                "support that currency."
            )
        purchase = parse_amount(
            data.purchase.amount, data.purchase.currency, what="purchase.amount"
        )
        if purchase.amount <= 0:
            raise Unprocessable("purchase.amount must be positive.")
    return Earn(
        partner.partner_id,
        data.member_id,
        data.reference,
        points=data.points,
        purchase=purchase,
        available_at=_optional_time(data.available_at, "available_at"),
        expires_at=_optional_time(data.expires_at, "expires_at"),
    )


class PartnerController(Controller):
    """Signed partner calls: members, earn, burn, holds, reversals, transactions."""

    path = "/v1"
    tags = ["partner"]
    dependencies = {"partner": Provide(partner_caller)}

    @post(
        "/members",
        status_code=201,
        summary="Enrol a member, linked to the calling partner",
        opt=api(body=schemas.MemberCreate, responses={201: schemas.MemberCreated}),
    )
    async def enrol(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
    ) -> Response[schemas.MemberCreated]:
        data = decode_body(request, partner.body, schemas.MemberCreate)
        outcome = await services.ledger.enrol_member(
            partner.partner_id, data.reference, partner.idempotency
        )
        return respond(outcome)

    @post(
        "/members/{member_id:str}/sessions",
        status_code=201,
        summary="Create a member token",
        opt=api(
            body=schemas.SessionCreate,
            responses={201: schemas.SessionCreated},
            errors=(MemberNotFound,),
        ),
    )
    async def session(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        member_id: FromPath[str],
    ) -> Response[schemas.SessionCreated]:
        data = decode_body(request, partner.body, schemas.SessionCreate)
        outcome = await create_member_session(
            services,
            partner_id=partner.partner_id,
            member_id=_member_id(member_id),
            ttl_seconds=data.ttl_seconds,
            idempotency=partner.idempotency,
        )
        return respond(outcome)

    @post(
        "/earn",
        status_code=201,
        summary="Issue points to a member",
        opt=api(
            body=schemas.EarnCreate,
            responses={201: schemas.Transaction},
            errors=(MemberNotFound, CurrencyNotSupported, CreditLimitExceeded),
            example={"member_id": "mem_" + "0" * 32, "points": 500, "reference": "basket-1"},
        )
        | _POSTING,
    )
    async def earn(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
    ) -> Response[schemas.Transaction]:
        return await _post(services, partner, lambda: _earn_command(request, partner))

    @post(
        "/burn",
        status_code=201,
        summary="Redeem a member's points",
        opt=api(
            body=schemas.BurnCreate,
            responses={201: schemas.Transaction},
            errors=(MemberNotFound, InsufficientPoints),
            example={"member_id": "mem_" + "0" * 32, "points": 300, "reference": "basket-2"},
        )
        | _POSTING,
    )
    async def burn(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
    ) -> Response[schemas.Transaction]:
        def build() -> Command:
            data = decode_body(request, partner.body, schemas.BurnCreate)
            return Burn(partner.partner_id, data.member_id, data.points, data.reference)

        return await _post(services, partner, build)

    @post(
        "/holds",
        status_code=201,
        summary="Reserve points at the till",
        opt=api(
            body=schemas.HoldCreate,
            responses={201: schemas.HoldOut},
            errors=(MemberNotFound, InsufficientPoints),
        )
        | _POSTING,
    )
    async def open_hold(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
    ) -> Response[schemas.HoldOut]:
        def build() -> Command:
            data = decode_body(request, partner.body, schemas.HoldCreate)
            return OpenHold(
                partner.partner_id, data.member_id, data.points, data.reference, data.expires_in
            )

        return await _post(services, partner, build)

    @get(
        "/holds/{hold_id:str}",
        summary="One of the partner's holds",
        opt=api(responses={200: schemas.HoldOut}, errors=(HoldNotFound,)),
    )
    async def get_hold(
        self,
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        hold_id: FromPath[str],
    ) -> schemas.HoldOut:
        return await services.ledger.get_hold(partner.partner_id, _hold_id(hold_id))

    @post(
        "/holds/{hold_id:str}/capture",
        status_code=200,
        summary="Burn held points",
        opt=api(
            body=schemas.HoldCapture,
            responses={200: schemas.HoldOut},
            errors=(HoldNotFound, HoldNotOpen),
        )
        | _POSTING,
    )
    async def capture(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        hold_id: FromPath[str],
    ) -> Response[schemas.HoldOut]:
        def build() -> Command:
            data = decode_body(request, partner.body, schemas.HoldCapture)
            return CaptureHold(partner.partner_id, _hold_id(hold_id), data.points)

        return await _post(services, partner, build)

    @post(
        "/holds/{hold_id:str}/void",
        status_code=200,
        summary="Release held points",
        opt=api(
            body=EmptyBody, responses={200: schemas.HoldOut}, errors=(HoldNotFound, HoldNotOpen)
        )
        | _POSTING,
    )
    async def void(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        hold_id: FromPath[str],
    ) -> Response[schemas.HoldOut]:
        def build() -> Command:
            decode_body(request, partner.body, EmptyBody)
            return VoidHold(partner.partner_id, _hold_id(hold_id))

        return await _post(services, partner, build)

    @post(
        "/transactions/{transaction_id:str}/reversals",
        status_code=201,
        summary="Return or refund",
        opt=api(
            body=schemas.ReversalCreate,
            responses={201: schemas.Transaction},
            errors=(
                TransactionNotFound,
                ReversalExceedsOriginal,
                NotReversible,
                InsufficientPoints,
            ),
        )
        | _POSTING,
    )
    async def reverse(
        self,
        request: Request[Any, Any, Any],
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        transaction_id: FromPath[str],
    ) -> Response[schemas.Transaction]:
        def build() -> Command:
            data = decode_body(request, partner.body, schemas.ReversalCreate)
            return Reverse(
                partner.partner_id, _transaction_id(transaction_id), data.points, data.reference
            )

        return await _post(services, partner, build)

    @get(
        "/transactions/{transaction_id:str}",
        summary="One of the partner's transactions",
        opt=api(responses={200: schemas.Transaction}, errors=(TransactionNotFound,)),
    )
    async def get_transaction(
        self,
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        transaction_id: FromPath[str],
    ) -> schemas.Transaction:
        return await services.ledger.get_transaction(
            partner.partner_id, _transaction_id(transaction_id)
        )

    @get(
        "/transactions",
        summary="The partner's transactions, newest first",
        opt=api(responses={200: schemas.TransactionPage}),
    )
    async def list_transactions(
        self,
        *,
        partner: NamedDependency[PartnerCaller],
        services: NamedDependency[Services],
        reference: FromQuery[str | None] = None,
        member_id: FromQuery[str | None] = None,
        transaction_type: Annotated[str | None, QueryParameter(name="type")] = None,
        after: FromQuery[str | None] = None,
        limit: Limit = PAGE_SIZE_DEFAULT,
        posted_after: FromQuery[str | None] = None,
        posted_before: FromQuery[str | None] = None,
    ) -> schemas.TransactionPage:
        types: tuple[str, ...] = tuple(sorted(PARTNER_TRANSACTION_TYPES))
        if transaction_type is not None:
            if transaction_type not in PARTNER_TRANSACTION_TYPES:
                raise Unprocessable(f"type must be one of {', '.join(types)}.")
            types = (transaction_type,)
        if reference is not None and len(reference) > 128:
            raise Unprocessable("reference is at most 128 characters.")
        if member_id is not None:
            await services.members.refuse_erased(member_id)
        return await services.ledger.list_transactions(
            partner_id=partner.partner_id,
            member_id=_query_filter(member_id, MEMBER_ID_SHAPE, "member_id"),
            types=types,
            reference=_query_filter(reference, _REFERENCE_SHAPE, "reference"),
            after=_query_filter(after, _CURSOR_SHAPE, "after"),
            limit=limit,
            posted_after=_query_time(posted_after, "posted_after"),
            posted_before=_query_time(posted_before, "posted_before"),
        )


class BalanceController(Controller):
    """A balance, for a signed partner linked to the member or for the member's own token."""

    path = "/v1/members"
    tags = ["partner", "member"]

    @get(
        "/{member_id:str}/balance",
        summary="A member's balance",
        dependencies={"caller": Provide(member_or_partner_caller)},
        opt=api(responses={200: schemas.BalanceOut}, errors=(MemberNotFound,))
        | {NONCE_IN_READ: True},
    )
    async def balance(
        self,
        caller: NamedDependency[Caller],
        services: NamedDependency[Services],
        member_id: FromPath[str],
    ) -> schemas.BalanceOut:
        if caller.partner_id is None and caller.member_id != member_id:
            raise MemberNotFound(f"No member {member_id}.")
        try:
            member = _member_id(member_id)
        except MemberNotFound as refusal:  # never read: its nonce is spent here
            await spend_nonce(services, caller.nonce, refusal)
        try:
            balance, tier = await services.members.read_balance(
                member, partner_id=caller.partner_id, nonce=caller.nonce
            )
        except NonceReplayed:
            metrics.SIGNATURE_FAILURES.labels(NonceReplayed.code).inc()
            raise
        return balance_view(balance, tier_view(tier))


class MemberController(Controller):
    """Calls with a member token: the member's own history across all partners."""

    path = "/v1/members"
    tags = ["member"]
    dependencies = {"member": Provide(member_caller)}

    @get(
        "/{member_id:str}/transactions",
        summary="A member's history, newest first",
        opt=api(responses={200: schemas.TransactionPage}, errors=(MemberNotFound,)),
    )
    async def history(
        self,
        member: NamedDependency[MemberCaller],
        services: NamedDependency[Services],
        member_id: FromPath[str],
        after: FromQuery[str | None] = None,
        limit: Limit = PAGE_SIZE_DEFAULT,
    ) -> schemas.TransactionPage:
        if member.member_id != member_id:
            raise MemberNotFound(f"No member {member_id}.")
        return await services.ledger.list_transactions(
            member_id=member_id,
            types=_MEMBER_HISTORY_TYPES,
            after=_query_filter(after, _CURSOR_SHAPE, "after"),
            limit=limit,
        )
