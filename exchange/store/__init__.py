"""All ledger SQL, in one dialect: asyncpg on the pooled connection (`Connection`).

_connection   the connection type; `driver_of` (the asyncpg connection inside a
              SQLAlchemy `engine.begin()` block) and `transaction`
_posting      the posting path's steps, round trip by round trip
_keys         idempotency keys, partner- and member-scoped: `claim_keys`, `remember`
              (and the settlement barrier, entered with the claim)
_write        the batch's one write statement, its columns derived from `exchange.tables`
_rows         the row structs the store writes (fields = table columns, in order)
_records      idempotency records, a posting's request; the barrier key, counter shards
_reads        balance reads and the sweep's due members
_queries      off the hot path: closing the journal, enrolment, history, liability
_members      tiers' qualifying points, the transfer limit's 30-day total
_adjustments  four-eyes adjustments
_errors       driver errors stop here
"""

from exchange.store._adjustments import (
    AdjustmentRow,
    adjustment_partner_status,
    fetch_adjustment,
    insert_adjustment,
    lock_adjustment,
    mark_adjustment_expired,
    mark_adjustment_posted,
    member_exists,
    pending_adjustments,
)
from exchange.store._connection import Connection, driver_of, transaction
from exchange.store._errors import (
    RetryableConflict,
    is_connection_lost,
    is_unavailable,
    translate_errors,
    unavailable_as_503,
)
from exchange.store._keys import (
    MEMBER_KEYS,
    PARTNER_KEYS,
    RECORD_COLUMNS,
    KeyScope,
    claim_keys,
    enter_settlement_barrier,
    remember,
)
from exchange.store._members import (
    BalanceKey,
    qualifying_points,
    read_books_with_qualifying,
    transferred_since,
)
from exchange.store._nonces import NOT_DURABLE, spend_nonces_sql
from exchange.store._posting import (
    Books,
    Locked,
    TermsRow,
    claim_and_lock,
    claim_nonces,
    load_books,
    load_originals,
    lock_credit_limited,
    lock_members,
    resolve_targets,
)
from exchange.store._queries import (
    close_journal_until,
    create_member,
    fetch_hold,
    fetch_posting,
    is_linked,
    liability_by_issuer,
    list_postings,
)
from exchange.store._reads import due_member_ids, read_book
from exchange.store._records import (
    COUNTER_SHARDS,
    SETTLEMENT_BARRIER_KEY,
    IdempotencyRecord,
    PostingRequest,
    StoredResponse,
)
from exchange.store._rows import (
    AllocationRow,
    EntryRow,
    HoldRow,
    LinkRow,
    LotRow,
    PostingRow,
)
from exchange.store._write import BatchWrite, write_batch

__all__ = [
    "COUNTER_SHARDS",
    "MEMBER_KEYS",
    "NOT_DURABLE",
    "PARTNER_KEYS",
    "RECORD_COLUMNS",
    "SETTLEMENT_BARRIER_KEY",
    "AdjustmentRow",
    "AllocationRow",
    "BalanceKey",
    "BatchWrite",
    "Books",
    "Connection",
    "EntryRow",
    "HoldRow",
    "IdempotencyRecord",
    "KeyScope",
    "LinkRow",
    "Locked",
    "LotRow",
    "PostingRequest",
    "PostingRow",
    "RetryableConflict",
    "StoredResponse",
    "TermsRow",
    "adjustment_partner_status",
    "claim_and_lock",
    "claim_keys",
    "claim_nonces",
    "close_journal_until",
    "create_member",
    "driver_of",
    "due_member_ids",
    "enter_settlement_barrier",
    "fetch_adjustment",
    "fetch_hold",
    "fetch_posting",
    "insert_adjustment",
    "is_connection_lost",
    "is_linked",
    "is_unavailable",
    "liability_by_issuer",
    "list_postings",
    "load_books",
    "load_originals",
    "lock_adjustment",
    "lock_credit_limited",
    "lock_members",
    "mark_adjustment_expired",
    "mark_adjustment_posted",
    "member_exists",
    "pending_adjustments",
    "qualifying_points",
    "read_book",
    "read_books_with_qualifying",
    "remember",
    "resolve_targets",
    "spend_nonces_sql",
    "transaction",
    "transferred_since",
    "translate_errors",
    "unavailable_as_503",
    "write_batch",
]
