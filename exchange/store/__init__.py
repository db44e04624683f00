"""All ledger SQL. The posting path runs on asyncpg directly (`_posting`, its write
statement in `_write`, with the balance and sweep reads in `_reads`); everything else goes
through SQLAlchemy Core (`_queries`). Driver errors stop here (`_errors`).
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
from exchange.store._errors import (
    RetryableConflict,
    is_connection_lost,
    is_unavailable,
    translate_errors,
    unavailable_as_503,
)
from exchange.store._members import (
    claim_member_key,
    qualifying_points,
    read_book_with_qualifying,
    save_member_key,
    transferred_since,
)
from exchange.store._posting import (
    Connection,
    claim_keys,
    claim_nonces,
    load_books,
    load_originals,
    load_partner_terms,
    lock_members,
    resolve_targets,
)
from exchange.store._queries import (
    claim_idempotency_keys,
    close_journal_until,
    create_member,
    fetch_hold,
    fetch_posting,
    is_linked,
    liability_by_issuer,
    list_postings,
    save_idempotency,
)
from exchange.store._reads import due_member_ids, read_book
from exchange.store._records import (
    COUNTER_SHARDS,
    SETTLEMENT_BARRIER_KEY,
    IdempotencyRecord,
    SignatureRecord,
    StoredResponse,
)
from exchange.store._write import BatchWrite, write_batch

__all__ = [
    "COUNTER_SHARDS",
    "SETTLEMENT_BARRIER_KEY",
    "AdjustmentRow",
    "BatchWrite",
    "Connection",
    "IdempotencyRecord",
    "RetryableConflict",
    "SignatureRecord",
    "StoredResponse",
    "adjustment_partner_status",
    "claim_idempotency_keys",
    "claim_keys",
    "claim_member_key",
    "claim_nonces",
    "close_journal_until",
    "create_member",
    "due_member_ids",
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
    "load_partner_terms",
    "lock_adjustment",
    "lock_members",
    "mark_adjustment_expired",
    "mark_adjustment_posted",
    "member_exists",
    "pending_adjustments",
    "qualifying_points",
    "read_book",
    "read_book_with_qualifying",
    "resolve_targets",
    "save_idempotency",
    "save_member_key",
    "transferred_since",
    "translate_errors",
    "unavailable_as_503",
    "write_batch",
]
