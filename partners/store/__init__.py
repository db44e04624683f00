"""All partner SQL: the registry's partners, terms and keys; the gateway's key lookups,
nonces and key-change listener; member sessions; the signature evidence of postings.

- `_registry`   partners, terms history, keys, the `exchange_keys` NOTIFY (SQLAlchemy Core
                on the registry's connection; it owns the database transaction)
- `_gateway`    the request path: key lookup, key id directory, batched nonce inserts
                (asyncpg under a pooled connection), and the LISTEN connection
- `_sessions`   member session rows, nonce and session purges, stored signatures

Driver errors stop here: callers see `AlreadyExists`, `DatabaseUnavailable` or a record.
The tables are `partners.tables`.
"""

from partners.store._gateway import KeyListener, fetch_key, fetch_key_ids, insert_nonces, listen
from partners.store._registry import (
    KEYS_CHANNEL,
    KeyInfo,
    PartnerRecord,
    PartnerStatus,
    insert_key,
    insert_partner,
    insert_terms,
    load_partners,
    lock_partner,
    notify_key_change,
    partner_status,
    revoke_key,
    revoke_keys_refused_by,
    update_partner_row,
)
from partners.store._sessions import (
    StoredSignature,
    create_session,
    find_session,
    load_signature,
    purge_nonces,
    purge_sessions,
)

__all__ = [
    "KEYS_CHANNEL",
    "KeyInfo",
    "KeyListener",
    "PartnerRecord",
    "PartnerStatus",
    "StoredSignature",
    "create_session",
    "fetch_key",
    "fetch_key_ids",
    "find_session",
    "insert_key",
    "insert_nonces",
    "insert_partner",
    "insert_terms",
    "listen",
    "load_partners",
    "load_signature",
    "lock_partner",
    "notify_key_change",
    "partner_status",
    "purge_nonces",
    "purge_sessions",
    "revoke_key",
    "revoke_keys_refused_by",
    "update_partner_row",
]
