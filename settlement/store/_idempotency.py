"""Operator tokens' idempotency keys (contract §8 conventions): the scope in which the
ledger store's one claim and one remember (`exchange.store.claim_keys`, `remember`) keep
them. Same lock text as before the scopes were unified ('operator', token, key), so an
operator key never shares a lock with a partner's or a member's."""

from __future__ import annotations

from exchange.store import RECORD_COLUMNS, KeyScope
from settlement.tables import operator_idempotency_keys

__all__ = ["OPERATOR_KEYS"]

OPERATOR_KEYS = KeyScope(
    operator_idempotency_keys.name,
    "token_id",
    "'operator' || chr(31) || ",
    record_columns=RECORD_COLUMNS[:4],  # no posting: operators' POSTs make none
)
