"""The ledger core: points, postings, lots, holds and the posting rules. Pure.

Nothing here does I/O or imports a framework; `exchange.store` persists what these
rules produce and `exchange.service` runs them inside database transactions.

The posting rules' contract (validate first, mutate after; time-driven changes applied
first, in order, never stamped inside a closed period) is the docstring of `_operations`.
`_model` holds the data; `_common` what the rules share; `_time` the time-driven changes
(`apply_due`); `_operations` earns, burns, holds and balances; `_reversals` reversals;
`_transfers` member-to-member transfers.
"""

from exchange.ledger._adjustments import adjust
from exchange.ledger._common import Context, OriginalPosting, PartnerState
from exchange.ledger._model import (
    EXPIRING_LOTS_SHOWN_MAX,
    MEMBER_ACCOUNTS,
    PARTNER_TRANSACTION_TYPES,
    POINTS_PER_REQUEST_MAX,
    Account,
    Allocation,
    AllocationKind,
    Balance,
    BalanceAfter,
    Effect,
    Entry,
    ExpiringPoints,
    Hold,
    HoldStatus,
    IdFactory,
    Lot,
    MemberBook,
    PartnerTerms,
    Posting,
    PostingType,
)
from exchange.ledger._operations import (
    HOLD_EXPIRES_IN_S_DEFAULT,
    HOLD_EXPIRES_IN_S_MAX,
    balance,
    balance_after,
    burn,
    capture_hold,
    earn,
    open_hold,
    points_for_purchase,
    void_hold,
)
from exchange.ledger._reversals import reverse
from exchange.ledger._time import apply_due
from exchange.ledger._transfers import TransferLimits, transfer

__all__ = [
    "EXPIRING_LOTS_SHOWN_MAX",
    "HOLD_EXPIRES_IN_S_DEFAULT",
    "HOLD_EXPIRES_IN_S_MAX",
    "MEMBER_ACCOUNTS",
    "PARTNER_TRANSACTION_TYPES",
    "POINTS_PER_REQUEST_MAX",
    "Account",
    "Allocation",
    "AllocationKind",
    "Balance",
    "BalanceAfter",
    "Context",
    "Effect",
    "Entry",
    "ExpiringPoints",
    "Hold",
    "HoldStatus",
    "IdFactory",
    "Lot",
    "MemberBook",
    "OriginalPosting",
    "PartnerState",
    "PartnerTerms",
    "Posting",
    "PostingType",
    "TransferLimits",
    "adjust",
    "apply_due",
    "balance",
    "balance_after",
    "burn",
    "capture_hold",
    "earn",
    "open_hold",
    "points_for_purchase",
    "reverse",
    "transfer",
    "void_hold",
]
