"""Settlement SQL, one module per concern; everything a caller needs is re-exported here.

    _runs          storing and reading runs (lines, flows), the credit-limit handover, the
                   postings behind a line; `RunCollision` and `translate_errors`
    _period        measuring a period of the journal (`read_period`) for the engine
    _liabilities   the issuers' outstanding points now, aged, and their reconciliation
    _approval      approval rows
    _payments      the partner lock, open documents, payments and their allocations
    _receivables   open documents and unapplied credits as of a date
    _journal       the period figures the run's journal needs beyond its lines
    _rollforward   the roll-forward's classified movements
    _idempotency   the operator tokens' scope of the ledger store's idempotency keys
    _scheduler     the scheduler's advisory lock

The documents' numbering and rows are `settlement.documents._store`. The calculations
(`settlement.engine`, `approval`, `payments`, `receivables`, `journal`, `rollforward`)
are pure and import this package only for its row types; the services own the database
transactions and call both. Driver errors stop here (`translate_errors`).
"""

from settlement.store._approval import (
    insert_approval,
    load_approval,
    load_approvals,
)
from settlement.store._idempotency import OPERATOR_KEYS
from settlement.store._journal import (
    read_journal_figures,
)
from settlement.store._liabilities import (
    AGEING_LIMITS_DAYS,
    LiabilityReconciliation,
    LiabilityRow,
    liabilities,
    liability_reconciliation,
)
from settlement.store._payments import (
    insert_payment,
    load_payment,
    lock_partner,
    open_items,
)
from settlement.store._period import (
    MEASURING_QUERIES,
    SETTLEMENT_WORK_MEM_MB,
    read_period,
)
from settlement.store._receivables import (
    read_open_items,
    read_unapplied,
)
from settlement.store._rollforward import (
    read_movements,
)
from settlement.store._runs import (
    LINE_POSTING_TYPES,
    PeriodPosting,
    RunCollision,
    RunHeader,
    StoredRun,
    add_settled_issuance,
    closed_until,
    earliest_posting,
    find_run,
    insert_run,
    latest_run,
    list_runs,
    load_header,
    load_run,
    period_postings,
    translate_errors,
)
from settlement.store._scheduler import (
    try_scheduler_lock,
)

__all__ = [
    "AGEING_LIMITS_DAYS",
    "LINE_POSTING_TYPES",
    "MEASURING_QUERIES",
    "OPERATOR_KEYS",
    "SETTLEMENT_WORK_MEM_MB",
    "LiabilityReconciliation",
    "LiabilityRow",
    "PeriodPosting",
    "RunCollision",
    "RunHeader",
    "StoredRun",
    "add_settled_issuance",
    "closed_until",
    "earliest_posting",
    "find_run",
    "insert_approval",
    "insert_payment",
    "insert_run",
    "latest_run",
    "liabilities",
    "liability_reconciliation",
    "list_runs",
    "load_approval",
    "load_approvals",
    "load_header",
    "load_payment",
    "load_run",
    "lock_partner",
    "open_items",
    "period_postings",
    "read_journal_figures",
    "read_movements",
    "read_open_items",
    "read_period",
    "read_unapplied",
    "translate_errors",
    "try_scheduler_lock",
]
