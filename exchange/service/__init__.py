"""Ledger use cases. Each `submit` runs many requests in ONE database transaction.

That batch shape is the write path for everything: a single HTTP request is a batch of
one, and the group committer (`exchange.batching`) gathers concurrent requests into
bigger batches. Inside the database transaction the steps are fixed:

    nonces → barrier → idempotency try-locks → resolve holds/originals → lock members (sorted)
    → partner terms → load books → apply the pure rules per request → bulk write → commit

A request that fails (not enough points, a reused key) gets its error and changes
nothing: the rules validate before they mutate, and when no request in the batch
succeeded nothing is written at all. Deadlocks and key races retry the whole batch.

Layout: `_commands` (what callers pass in and get back), `_ledger` (`LedgerService`),
`_batch` (one submit's working state and the pure rules applied per request),
`_idempotency` (`replay_or_claim` and `remember` for single idempotent requests: thin
wrappers over the store's one `claim_keys` and one `remember`).
"""

from exchange.service._adjustments import (
    ADJUSTMENT_PENDING_DAYS,
    AdjustmentService,
    Approver,
    adjustment_view,
)
from exchange.service._commands import (
    BatchEvidence,
    Burn,
    CaptureHold,
    Command,
    Earn,
    Idempotency,
    LedgerRequest,
    NonceClaim,
    OpenHold,
    Outcome,
    Record,
    Render,
    Reverse,
    SignatureProof,
    SweepResult,
    VoidHold,
)
from exchange.service._idempotency import claim_outcome, remember, replay_or_claim
from exchange.service._ledger import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, LedgerService

__all__ = [
    "ADJUSTMENT_PENDING_DAYS",
    "PAGE_SIZE_DEFAULT",
    "PAGE_SIZE_MAX",
    "AdjustmentService",
    "Approver",
    "BatchEvidence",
    "Burn",
    "CaptureHold",
    "Command",
    "Earn",
    "Idempotency",
    "LedgerRequest",
    "LedgerService",
    "NonceClaim",
    "OpenHold",
    "Outcome",
    "Record",
    "Render",
    "Reverse",
    "SignatureProof",
    "SweepResult",
    "VoidHold",
    "adjustment_view",
    "claim_outcome",
    "remember",
    "replay_or_claim",
]
