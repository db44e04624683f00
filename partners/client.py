"""The partner client: signed calls to the exchange's partner API (contract §2-§3, §6).

    with PartnerClient("https://exchange.example", key_id, private_key_b64url) as exchange:
        member = exchange.enrol_member(reference="cust-42")
        earned = exchange.earn(member["member_id"], 120, reference="order-991")
        earned.replayed    # True when the exchange answered from its idempotency store

`PartnerClient` (sync) and `AsyncPartnerClient` (async, every method awaitable) expose the
same methods with the same arguments and results. Their shared core:

- `_Endpoints` defines every API method once, as a `_Call` (method, path, JSON, query).
- `_ClientCore.encode` fixes a call's body bytes and Idempotency-Key once per logical call;
  `_ClientCore.prepare` builds a freshly signed `httpx.Request` for every attempt (new
  `created` and nonce, same body and Idempotency-Key, as contract §2.1 requires of an
  honest retry); `_ClientCore.check` classifies the response.
- The two clients differ only in how they send and sleep (httpx.Client + tenacity.Retrying
  vs httpx.AsyncClient + tenacity.AsyncRetrying).

Retries: network errors (`httpx.TransportError`, except an unsupported URL scheme), 5xx,
429 and 409 `request_in_progress`, up to `max_retries` times after the first attempt, with
full-jitter exponential backoff (`backoff_s` doubling, at most 8 s) or the response's
`Retry-After` (capped at `retry_after_s_max`). Other 4xx are never retried.

Results: every method returns a `PartnerResult`, a read-only mapping of the decoded JSON
object that also carries `status`, `replayed` (the `Idempotency-Replayed: true` header)
and the `idempotency_key` sent (None for GET). `request()` is the raw escape hatch and
returns the `httpx.Response`.

Errors: any non-2xx answer (after retries) raises `partners.errors.PartnerAPIError` with
the problem+json `code`; a network error on the last attempt is re-raised as the httpx
exception. `clock` (epoch seconds) replaces the system clock for `created`: for a partner
whose host clock drifts, and for tests that run the exchange on a frozen clock.
Argument errors (a float amount, a naive datetime, neither points nor purchase)
raise TypeError/ValueError when the method is called, before anything is sent (also on the
async client). Money goes out as decimal strings, times as RFC 3339 UTC.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec
import tenacity
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from partners.errors import PartnerAPIError
from partners.signing import load_private_key, sign_request

__all__ = ["AsyncPartnerClient", "PartnerClient", "PartnerResult"]

BACKOFF_S_MAX: Final = 8.0
RETRY_AFTER_S_MAX: Final = 30.0
JSON_MEDIA_TYPE: Final = "application/json"

_R = TypeVar("_R")
Purchase = tuple[str | Decimal, str] | Mapping[str, Any]
Params = Mapping[str, str | int]


@dataclass(frozen=True, slots=True)
class PartnerResult(Mapping[str, Any]):
    """The decoded JSON object of a 2xx answer, plus what the headers said about it.

    `replayed` is True when the exchange returned a stored answer for this Idempotency-Key
    (no second effect happened); `idempotency_key` is the key that was sent.
    """

    data: dict[str, Any]
    status: int
    replayed: bool
    idempotency_key: str | None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    json: Mapping[str, Any] | None = None
    params: Params | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A call with its body bytes and Idempotency-Key fixed for every attempt."""

    method: str
    path: str
    params: Params | None
    body: bytes | None
    idempotency_key: str | None


class _RetryableResponse(Exception):
    """An answer worth retrying (5xx, 429, 409 request_in_progress); internal to retries."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.retry_after_s = _retry_after_s(response.headers.get("retry-after"))


# --- encoding helpers ---------------------------------------------------------------------


def _segment(value: str) -> str:
    """One path segment, percent-encoded: ids may contain '/', '?' or '%'."""
    return quote(value, safe="")


def _points(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("points are whole numbers (int)")
    return value


def _money(value: object) -> str:
    if isinstance(value, float):
        raise TypeError("money is never a float: pass a Decimal or a decimal string")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise TypeError("a money amount is a Decimal or a decimal string")


def _purchase(purchase: Purchase) -> dict[str, str]:
    if isinstance(purchase, tuple):
        amount, currency = purchase
    else:
        amount, currency = purchase["amount"], purchase["currency"]
    return {"amount": _money(amount), "currency": str(currency)}


def _time(value: datetime | str | None) -> str | None:
    """RFC 3339 in UTC with a `Z`; strings pass through unchanged."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass an aware datetime (UTC or with an offset)")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fields(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _retry_delay_s(
    attempt: int, *, retry_after_s: float | None, backoff_s: float, retry_after_s_max: float
) -> float:
    """The wait before the next attempt: Retry-After when given (capped), else full jitter."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), retry_after_s_max)
    return random.uniform(0.0, min(BACKOFF_S_MAX, backoff_s * 2 ** (attempt - 1)))


def _problem(response: httpx.Response) -> dict[str, Any]:
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in {"application/problem+json", JSON_MEDIA_TYPE}:
        return {}
    try:
        problem = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _api_error(response: httpx.Response) -> PartnerAPIError:
    problem = _problem(response)
    code = problem.get("code")
    detail = problem.get("detail") or problem.get("title") or response.reason_phrase
    return PartnerAPIError(
        response.status_code,
        code if isinstance(code, str) else f"http_{response.status_code}",
        str(detail),
        problem,
    )


def _is_retryable(error: BaseException) -> bool:
    if isinstance(error, httpx.UnsupportedProtocol):
        return False
    return isinstance(error, _RetryableResponse | httpx.TransportError)


# --- the shared core ----------------------------------------------------------------------


class _ClientCore:
    """Everything both clients share: keys, encoding, signing, retry policy, classification."""

    def __init__(
        self,
        key_id: str,
        private_key: Ed25519PrivateKey | str,
        *,
        max_retries: int,
        backoff_s: float,
        retry_after_s_max: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.key_id = key_id
        self.private_key = (
            load_private_key(private_key) if isinstance(private_key, str) else private_key
        )
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.retry_after_s_max = retry_after_s_max
        self.clock = clock

    def encode(self, call: _Call) -> _Encoded:
        """Body bytes and Idempotency-Key, fixed once: every retry sends exactly these."""
        body = None if call.json is None else msgspec.json.encode(call.json)
        key = call.idempotency_key
        if key is None and call.method.upper() == "POST":
            key = str(uuid.uuid4())
        return _Encoded(call.method.upper(), call.path, call.params, body, key)

    def prepare(self, http: httpx.Client | httpx.AsyncClient, call: _Encoded) -> httpx.Request:
        """A newly signed request for one attempt: fresh `created` and nonce every time."""
        headers = {"Accept": JSON_MEDIA_TYPE}
        if call.body is not None:
            headers["Content-Type"] = JSON_MEDIA_TYPE
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        request = http.build_request(
            call.method, call.path, content=call.body, params=call.params, headers=headers
        )
        request.headers.update(
            sign_request(
                method=request.method,
                url=request.url,
                headers=request.headers,
                body=call.body,
                key_id=self.key_id,
                private_key=self.private_key,
                created=int(self.clock()) if self.clock is not None else None,
            )
        )
        return request

    @staticmethod
    def check(response: httpx.Response) -> httpx.Response:
        """The 2xx response itself; raise to retry, or PartnerAPIError for a final failure."""
        status = response.status_code
        if 200 <= status < 300:
            return response
        if status >= 500 or status == 429:
            raise _RetryableResponse(response)
        if status == 409 and _problem(response).get("code") == "request_in_progress":
            raise _RetryableResponse(response)
        raise _api_error(response)

    def retry_policy(self) -> dict[str, Any]:
        """Keyword arguments for tenacity.Retrying / AsyncRetrying."""
        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "wait": self._wait_s,
            "retry": tenacity.retry_if_exception(_is_retryable),
            "reraise": True,
        }

    def _wait_s(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        return _retry_delay_s(
            state.attempt_number,
            retry_after_s=error.retry_after_s if isinstance(error, _RetryableResponse) else None,
            backoff_s=self.backoff_s,
            retry_after_s_max=self.retry_after_s_max,
        )

    @staticmethod
    def result(response: httpx.Response, idempotency_key: str | None) -> PartnerResult:
        """The decoded JSON object of a 2xx response (an empty body decodes to {})."""
        try:
            data = msgspec.json.decode(response.content) if response.content else {}
        except msgspec.DecodeError:
            data = None
        if not isinstance(data, dict):
            raise PartnerAPIError(
                response.status_code, "invalid_response", "expected a JSON object", {}
            )
        replayed = response.headers.get("idempotency-replayed", "").lower() == "true"
        return PartnerResult(data, response.status_code, replayed, idempotency_key)


# --- the API, defined once for both clients -------------------------------------------------


class _Endpoints(Generic[_R]):
    """The partner API's methods; `_R` is `PartnerResult` or `Awaitable[PartnerResult]`."""

    def _call(self, call: _Call) -> _R:
        raise NotImplementedError

    def enrol_member(
        self, reference: str | None = None, *, idempotency_key: str | None = None
    ) -> _R:
        """POST /v1/members → 201 {member_id, created_at}; links the member to this partner."""
        body = _fields(reference=reference)
        return self._call(_Call("POST", "/v1/members", body, idempotency_key=idempotency_key))

    def balance(self, member_id: str) -> _R:
        """GET /v1/members/{member_id}/balance → the balance object."""
        return self._call(_Call("GET", f"/v1/members/{_segment(member_id)}/balance"))

    def create_session(
        self,
        member_id: str,
        ttl_seconds: int | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> _R:
        """POST /v1/members/{member_id}/sessions → 201 {token, expires_at}."""
        path = f"/v1/members/{_segment(member_id)}/sessions"
        body = _fields(ttl_seconds=ttl_seconds)
        return self._call(_Call("POST", path, body, idempotency_key=idempotency_key))

    def earn(
        self,
        member_id: str,
        points: int | None = None,
        *,
        purchase: Purchase | None = None,
        reference: str,
        available_at: datetime | str | None = None,
        expires_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> _R:
        """POST /v1/earn → 201 transaction. Give `points`, a `purchase`, or both.

        `purchase` is `(amount, currency)` or `{"amount": ..., "currency": ...}`; the amount
        is sent as a decimal string.
        """
        if points is None and purchase is None:
            raise ValueError("earn needs points or a purchase")
        body = _fields(
            member_id=member_id,
            points=None if points is None else _points(points),
            reference=reference,
            purchase=None if purchase is None else _purchase(purchase),
            available_at=_time(available_at),
            expires_at=_time(expires_at),
        )
        return self._call(_Call("POST", "/v1/earn", body, idempotency_key=idempotency_key))

    def burn(
        self,
        member_id: str,
        points: int,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> _R:
        """POST /v1/burn → 201 transaction; 422 insufficient_points changes nothing."""
        body = _fields(member_id=member_id, points=_points(points), reference=reference)
        return self._call(_Call("POST", "/v1/burn", body, idempotency_key=idempotency_key))

    def create_hold(
        self,
        member_id: str,
        points: int,
        reference: str | None = None,
        expires_in: int | None = None,
        idempotency_key: str | None = None,
    ) -> _R:
        """POST /v1/holds → 201 hold (status "open"); `expires_in` in seconds."""
        body = _fields(
            member_id=member_id, points=_points(points), reference=reference, expires_in=expires_in
        )
        return self._call(_Call("POST", "/v1/holds", body, idempotency_key=idempotency_key))

    def capture_hold(
        self, hold_id: str, points: int | None = None, idempotency_key: str | None = None
    ) -> _R:
        """POST /v1/holds/{hold_id}/capture → 200 hold (status "captured"); partial is final."""
        path = f"/v1/holds/{_segment(hold_id)}/capture"
        body = _fields(points=None if points is None else _points(points))
        return self._call(_Call("POST", path, body, idempotency_key=idempotency_key))

    def void_hold(self, hold_id: str, idempotency_key: str | None = None) -> _R:
        """POST /v1/holds/{hold_id}/void → 200 hold (status "voided")."""
        path = f"/v1/holds/{_segment(hold_id)}/void"
        return self._call(_Call("POST", path, {}, idempotency_key=idempotency_key))

    def reverse(
        self,
        transaction_id: str,
        points: int | None = None,
        reference: str | None = None,
        idempotency_key: str | None = None,
    ) -> _R:
        """POST /v1/transactions/{id}/reversals → 201 earn_reversal / burn_reversal."""
        path = f"/v1/transactions/{_segment(transaction_id)}/reversals"
        body = _fields(points=None if points is None else _points(points), reference=reference)
        return self._call(_Call("POST", path, body, idempotency_key=idempotency_key))

    def get_transaction(self, transaction_id: str) -> _R:
        """GET /v1/transactions/{transaction_id} → this partner's transaction."""
        return self._call(_Call("GET", f"/v1/transactions/{_segment(transaction_id)}"))

    def list_transactions(
        self,
        reference: str | None = None,
        member_id: str | None = None,
        type: str | None = None,
        after: str | None = None,
        limit: int | None = None,
        *,
        posted_after: datetime | str | None = None,
        posted_before: datetime | str | None = None,
    ) -> _R:
        """GET /v1/transactions → {items, next}: newest first; pass `next` back as `after`.
        `posted_after` (inclusive) and `posted_before` (exclusive) bound the posting time."""
        params = _fields(
            reference=reference,
            member_id=member_id,
            type=type,
            after=after,
            limit=limit,
            posted_after=_time(posted_after),
            posted_before=_time(posted_before),
        )
        return self._call(_Call("GET", "/v1/transactions", params=params))

    def statement(self, run_id: str) -> _R:
        """GET /v1/settlements/{run_id}/statement → this partner's line of that run."""
        return self._call(_Call("GET", f"/v1/settlements/{_segment(run_id)}/statement"))


# --- the two clients ------------------------------------------------------------------------


class PartnerClient(_Endpoints[PartnerResult]):
    """Synchronous partner client over `httpx.Client`; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        key_id: str,
        private_key: Ed25519PrivateKey | str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        backoff_s: float = 0.5,
        retry_after_s_max: float = RETRY_AFTER_S_MAX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._core = _ClientCore(
            key_id,
            private_key,
            max_retries=max_retries,
            backoff_s=backoff_s,
            retry_after_s_max=retry_after_s_max,
            clock=clock,
        )
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)

    def request(
        self,
        method: str,
        path: str,
        json: Mapping[str, Any] | None = None,
        params: Params | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send a signed request (with retries); the 2xx response, else PartnerAPIError."""
        return self._send(self._core.encode(_Call(method, path, json, params, idempotency_key)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, call: _Call) -> PartnerResult:
        encoded = self._core.encode(call)
        return self._core.result(self._send(encoded), encoded.idempotency_key)

    def _send(self, call: _Encoded) -> httpx.Response:
        try:
            return tenacity.Retrying(**self._core.retry_policy())(self._attempt, call)
        except _RetryableResponse as exhausted:
            raise _api_error(exhausted.response) from None

    def _attempt(self, call: _Encoded) -> httpx.Response:
        return self._core.check(self._http.send(self._core.prepare(self._http, call)))


class AsyncPartnerClient(_Endpoints[Awaitable[PartnerResult]]):
    """Asynchronous partner client over `httpx.AsyncClient`; every method is awaitable."""

    def __init__(
        self,
        base_url: str,
        key_id: str,
        private_key: Ed25519PrivateKey | str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
        retry_after_s_max: float = RETRY_AFTER_S_MAX,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._core = _ClientCore(
            key_id,
            private_key,
            max_retries=max_retries,
            backoff_s=backoff_s,
            retry_after_s_max=retry_after_s_max,
            clock=clock,
        )
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)

    async def request(
        self,
        method: str,
        path: str,
        json: Mapping[str, Any] | None = None,
        params: Params | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        """Send a signed request (with retries); the 2xx response, else PartnerAPIError."""
        call = self._core.encode(_Call(method, path, json, params, idempotency_key))
        return await self._send(call)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _call(self, call: _Call) -> Awaitable[PartnerResult]:
        return self._call_async(call)

    async def _call_async(self, call: _Call) -> PartnerResult:
        encoded = self._core.encode(call)
        return self._core.result(await self._send(encoded), encoded.idempotency_key)

    async def _send(self, call: _Encoded) -> httpx.Response:
        try:
            return await tenacity.AsyncRetrying(**self._core.retry_policy())(self._attempt, call)
        except _RetryableResponse as exhausted:
            raise _api_error(exhausted.response) from None

    async def _attempt(self, call: _Encoded) -> httpx.Response:
        request = self._core.prepare(self._http, call)
        return self._core.check(await self._http.send(request))
