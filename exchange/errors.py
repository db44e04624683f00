"""The exchange's exception tree: every operating error has a stable `code`.

Each error knows the HTTP status and the contract code it maps to; the single
mapping to RFC 9457 problem+json lives in `exchange.problems`. Errors raised in
`partners` and `settlement` subclass these, so there is one tree and one mapping.

    ExchangeError                       (500 internal_error)
    ├── BadRequest                      (400 bad_request)
    │   └── IdempotencyKeyMissing       (400 idempotency_key_missing)
    ├── Unauthorized                    (401 unauthorized; signature errors in partners.errors)
    │   └── NonceReplayed               (401 nonce_replayed; the posting path refuses it too)
    ├── Forbidden                       (403 forbidden)
    │   ├── PartnerSuspended            (403 partner_suspended)
    │   ├── PartnerTerminated           (403 partner_terminated)
    │   └── FourEyesRequired            (403 four_eyes_required)
    ├── NotFound                        (404 not_found)
    │   ├── MemberNotFound              (404 member_not_found)
    │   ├── TransactionNotFound         (404 transaction_not_found)
    │   ├── HoldNotFound                (404 hold_not_found)
    │   ├── PartnerNotFound             (404 partner_not_found)
    │   ├── AdjustmentNotFound          (404 adjustment_not_found)
    │   ├── BatchNotFound               (404 batch_not_found)
    │   ├── WebhookNotFound             (404 webhook_not_found)
    │   └── DeliveryNotFound            (404 delivery_not_found)
    ├── Conflict                        (409 conflict)
    │   ├── HoldNotOpen                 (409 hold_not_open)
    │   ├── RequestInProgress           (409 request_in_progress)
    │   ├── AlreadyExists               (409 already_exists)
    │   ├── AdjustmentNotPending        (409 adjustment_not_pending)
    │   └── TerminationFinal            (409 termination_final)
    ├── PayloadTooLarge                 (413 payload_too_large)
    ├── UnsupportedMediaType            (415 unsupported_media_type)
    ├── Unprocessable                   (422 validation_error)
    │   ├── InsufficientPoints          (422 insufficient_points)
    │   ├── CreditLimitExceeded         (422 credit_limit_exceeded)
    │   ├── CurrencyNotSupported        (422 currency_not_supported)
    │   ├── ReversalExceedsOriginal     (422 reversal_exceeds_original)
    │   ├── NotReversible               (422 not_reversible)
    │   ├── TransferLimitExceeded       (422 transfer_limit_exceeded)
    │   ├── IdempotencyKeyReused        (422 idempotency_key_reused)
    │   ├── BatchMalformed              (422 batch_malformed; the detail names the lines)
    │   ├── WebhookUrlInvalid           (422 webhook_url_invalid)
    │   └── NotARunPeriodEnd            (422 as_of_not_a_period_end)
    ├── RateLimited                     (429 rate_limited, carries retry_after_s)
    ├── ServiceUnavailable              (503 service_unavailable, with Retry-After)
    │   └── DatabaseUnavailable         (503 service_unavailable: PostgreSQL away or read-only)
    └── InvariantViolation              (500 invariant_violation; a bug, logged loudly)

Operating errors (a bad request, not enough points) are expected and typed.
`InvariantViolation` means the ledger found itself in a state it must never be in:
it is logged with its details and answered with a bare 500.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AdjustmentNotFound",
    "AdjustmentNotPending",
    "AlreadyExists",
    "BadRequest",
    "BatchMalformed",
    "BatchNotFound",
    "Conflict",
    "CreditLimitExceeded",
    "CurrencyNotSupported",
    "DatabaseUnavailable",
    "DeliveryNotFound",
    "ExchangeError",
    "Forbidden",
    "FourEyesRequired",
    "HoldNotFound",
    "HoldNotOpen",
    "IdempotencyKeyMissing",
    "IdempotencyKeyReused",
    "InsufficientPoints",
    "InvariantViolation",
    "MemberNotFound",
    "NonceReplayed",
    "NotARunPeriodEnd",
    "NotFound",
    "NotReversible",
    "PartnerNotFound",
    "PartnerSuspended",
    "PartnerTerminated",
    "PayloadTooLarge",
    "RateLimited",
    "RequestInProgress",
    "ReversalExceedsOriginal",
    "ServiceUnavailable",
    "TerminationFinal",
    "TransactionNotFound",
    "TransferLimitExceeded",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "WebhookNotFound",
    "WebhookUrlInvalid",
]


class ExchangeError(Exception):
    """Base of every error the exchange raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)


class BadRequest(ExchangeError):
    status = 400
    code = "bad_request"
    title = "Bad request"


class IdempotencyKeyMissing(BadRequest):
    code = "idempotency_key_missing"
    title = "Idempotency-Key header missing or malformed"


class Unauthorized(ExchangeError):
    status = 401
    code = "unauthorized"
    title = "Authentication required"


class NonceReplayed(Unauthorized):
    code = "nonce_replayed"
    title = "Signature nonce already used"

    @classmethod
    def spent(cls) -> NonceReplayed:
        """The refusal of a pair already used, wherever the nonce is checked."""
        return cls("this (keyid, nonce) pair was already used; sign each attempt with a new nonce")


class Forbidden(ExchangeError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class PartnerSuspended(Forbidden):
    code = "partner_suspended"
    title = "Partner is suspended"


class NotFound(ExchangeError):
    status = 404
    code = "not_found"
    title = "Not found"


class MemberNotFound(NotFound):
    code = "member_not_found"
    title = "Member not found"


class TransactionNotFound(NotFound):
    code = "transaction_not_found"
    title = "Transaction not found"


class HoldNotFound(NotFound):
    code = "hold_not_found"
    title = "Hold not found"


class PartnerNotFound(NotFound):
    code = "partner_not_found"
    title = "Partner not found"


class Conflict(ExchangeError):
    status = 409
    code = "conflict"
    title = "Conflict"


class HoldNotOpen(Conflict):
    code = "hold_not_open"
    title = "Hold is not open"


class RequestInProgress(Conflict):
    code = "request_in_progress"
    title = "A request with this Idempotency-Key is still being processed"


class AlreadyExists(Conflict):
    code = "already_exists"
    title = "Already exists"


class PayloadTooLarge(ExchangeError):
    status = 413
    code = "payload_too_large"
    title = "Request body too large"


class UnsupportedMediaType(ExchangeError):
    status = 415
    code = "unsupported_media_type"
    title = "Request bodies must be application/json"


class Unprocessable(ExchangeError):
    status = 422
    code = "validation_error"
    title = "Invalid request"


class InsufficientPoints(Unprocessable):
    code = "insufficient_points"
    title = "Not enough available points"


class CreditLimitExceeded(Unprocessable):
    code = "credit_limit_exceeded"
    title = "Partner credit limit exceeded"


class CurrencyNotSupported(Unprocessable):
    code = "currency_not_supported"
    title = "No earn rate for this currency"


class ReversalExceedsOriginal(Unprocessable):
    code = "reversal_exceeds_original"
    title = "Reversals would exceed the original transaction"


class NotReversible(Unprocessable):
    code = "not_reversible"
    title = "Transaction cannot be reversed"


class TransferLimitExceeded(Unprocessable):
    code = "transfer_limit_exceeded"
    title = "Transfer limit exceeded"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"
    title = "Idempotency-Key was already used for a different request"


class RateLimited(ExchangeError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, retry_after_s: int, detail: str | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(detail)


class ServiceUnavailable(ExchangeError):
    status = 503
    code = "service_unavailable"
    title = "Service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """PostgreSQL cannot serve us now: unreachable, restarting, our connection was killed,
    read-only, disk full. Transient by nature; `reason` (the driver's error class and
    SQLSTATE) is for the log, never the response."""

    retry_after_s: ClassVar[int] = 1

    def __init__(self, detail: str | None = None, *, reason: str = "") -> None:
        self.reason = reason
        super().__init__(detail)


class InvariantViolation(ExchangeError):
    """A ledger invariant does not hold: a bug or a corrupted database. Never expected."""

    status = 500
    code = "invariant_violation"
    title = "Internal error"


# -- closing the month (contract §8) ------------------------------------------------------------


class PartnerTerminated(Forbidden):
    code = "partner_terminated"
    title = "Partner has been terminated"


class FourEyesRequired(Forbidden):
    code = "four_eyes_required"
    title = "Another operator must approve this"


class AdjustmentNotFound(NotFound):
    code = "adjustment_not_found"
    title = "Adjustment not found"


class AdjustmentNotPending(Conflict):
    code = "adjustment_not_pending"
    title = "Adjustment is no longer pending"


class TerminationFinal(Conflict):
    code = "termination_final"
    title = "A terminated partner stays terminated"


class NotARunPeriodEnd(Unprocessable):
    code = "as_of_not_a_period_end"
    title = "as_of is not the period_end of a settlement run"


class BatchNotFound(NotFound):
    code = "batch_not_found"
    title = "No such batch"


class BatchMalformed(Unprocessable):
    """A batch file that cannot be read as a whole: nothing of it is accepted."""

    code = "batch_malformed"
    title = "The batch file is malformed"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"
    title = "No webhook is configured"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    title = "No such webhook delivery"


class WebhookUrlInvalid(Unprocessable):
    code = "webhook_url_invalid"
    title = "The webhook URL is not acceptable"
