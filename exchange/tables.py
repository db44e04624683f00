"""SQLAlchemy table definitions: the one MetaData that Alembic migrations must match.

Every package's tables are registered on this MetaData (partners and settlement import
it), so one autogenerate comparison checks the whole schema (`migrations/metadata.py`
imports them all). The partner rows and their terms are `partners.tables`.

The journal (`postings`, `entries`) and the lot `allocations` are append-only: the
database refuses UPDATE, DELETE and TRUNCATE on them (migration 0002 installs the
triggers), checks that every statement's entries balance per posting, and refuses a
posting stamped before `ledger_state.closed_until` (a closed settlement period).
The references of postings, entries and lots are checked once per statement by
triggers instead of foreign keys, and their parents are never deleted (migration 0016,
docs/ledger.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from exchange.ledger import Account, AllocationKind, HoldStatus, PostingType

__all__ = [
    "ACCOUNTS",
    "ALLOCATION_KINDS",
    "HOLD_STATUSES",
    "KEY_COLUMNS",
    "POSTING_TYPES",
    "REQUEST_COLUMNS",
    "SIGNATURE_COLUMNS",
    "adjustments",
    "allocations",
    "console_sessions",
    "entries",
    "holds",
    "idempotency_keys",
    "idempotency_records",
    "ledger_state",
    "lots",
    "member_links",
    "members",
    "metadata",
    "operator_tokens",
    "partner_counters",
    "posting_signatures",
    "postings",
    "views",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

ID = String(64)  # ids the exchange assigns or partners choose (slugs): opaque, <= 64 chars
PRICE = Numeric(18, 6)  # price per point, up to 6 decimals
MONEY = Numeric(28, 6)  # sums of points x prices, exact


def _timestamp(name: str, *, nullable: bool = False, default_now: bool = False) -> Column[object]:
    return Column(
        name,
        DateTime(timezone=True),
        nullable=nullable,
        server_default=func.now() if default_now else None,
    )


operator_tokens = Table(
    "operator_tokens",
    metadata,
    Column("token_id", String(32), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    # sha256 of the whole bearer token; the token itself is never stored.
    Column("token_hash", String(64), nullable=False, unique=True),
    _timestamp("created_at", default_now=True),
    _timestamp("revoked_at", nullable=True),
    CheckConstraint("role IN ('admin', 'finance')", name="role"),
)

# Web console sign-ins: the sha256 of the session cookie, never the cookie itself. A
# session dies with its expiry, its sign-out, or the revocation of its operator token.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("token_id", String(32), ForeignKey("operator_tokens.token_id"), nullable=False),
    _timestamp("created_at"),
    _timestamp("expires_at"),
    Index("ix_console_sessions_expires_at", "expires_at"),
)

# -- partner counters (the partner rows, terms, keys and sessions are `partners.tables`) ------

# Issuance value and outstanding liability per partner, split over a few shard rows so
# that a big partner's postings do not queue on one row lock (their sum is the figure).
partner_counters = Table(
    "partner_counters",
    metadata,
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("shard", SmallInteger, nullable=False),
    Column("issued_value", MONEY, nullable=False, server_default="0"),
    Column("liability_points", BigInteger, nullable=False, server_default="0"),
    Column("liability_value", MONEY, nullable=False, server_default="0"),
    PrimaryKeyConstraint("partner_id", "shard"),
)

# -- members ----------------------------------------------------------------------------------

members = Table(
    "members",
    metadata,
    Column("member_id", ID, primary_key=True),
    Column("reference", String(128), nullable=True),
    Column("enrolled_by", ID, ForeignKey("partners.partner_id"), nullable=True),
    # Points owed after an earn reversal found them spent (a negative balance).
    Column("debt", BigInteger, nullable=False, server_default="0"),
    _timestamp("created_at", default_now=True),
    # `erased`: the member's data was erased (GDPR); the ledger keeps its amounts under the
    # pseudonymous member_id and every request about the member answers 404.
    Column("status", String(16), nullable=False, server_default="active"),
    _timestamp("erased_at", nullable=True),
    CheckConstraint("debt >= 0", name="debt"),
    CheckConstraint("status IN ('active', 'erased')", name="status"),
)

member_links = Table(
    "member_links",
    metadata,
    Column("member_id", ID, ForeignKey("members.member_id"), nullable=False),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    _timestamp("linked_at", default_now=True),
    PrimaryKeyConstraint("member_id", "partner_id"),
)

# -- the journal ------------------------------------------------------------------------------

# The ledger's enums are the one list of each kind: the CHECK constraints below and the
# store's SQL are built from them (in enum order, so the constraints' text is unchanged).
POSTING_TYPES = tuple(kind.value for kind in PostingType)
# `transfer` is a clearing account owned by one transfer (its id): the sender's
# transfer_out credits it, the recipient's transfer_in debits it, so it nets to zero.
ACCOUNTS = tuple(account.value for account in Account)
ALLOCATION_KINDS = tuple(kind.value for kind in AllocationKind)
HOLD_STATUSES = tuple(status.value for status in HoldStatus)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


# The columns of `postings` that hold the request that made the posting: what a partner
# sent, not what the posting is. Its idempotency key with the response stored under it
# (contract 2.2), and its verified signature (`exchange audit`): on the posting's own row,
# or, for a posting made from a batch file, the file's signature stored once with its
# batch (`batch_id`, migration 0020).
KEY_COLUMNS = ("idempotency_key", "request_fingerprint", "response_status", "response")
SIGNATURE_COLUMNS = (
    "signature_key_id",
    "signature_input",
    "signature",
    "content_digest",
    "signature_base",
    "batch_id",
)
REQUEST_COLUMNS = KEY_COLUMNS + SIGNATURE_COLUMNS

postings = Table(
    "postings",
    metadata,
    Column("posting_id", Uuid, primary_key=True),
    Column("type", String(16), nullable=False),
    # References of postings, entries and lots (member, partner, posting, lot) are checked
    # once per statement by triggers, not by foreign keys (migration 0016).
    Column("member_id", ID, nullable=False),
    Column("partner_id", ID, nullable=True),
    Column("points", BigInteger, nullable=False),
    Column("reference", String(128), nullable=True),
    Column("reverses", Uuid, nullable=True),
    Column("hold_id", Uuid, nullable=True),
    Column("unit_price", PRICE, nullable=True),
    Column("currency", String(3), nullable=True),
    _timestamp("posted_at"),
    _timestamp("recorded_at", default_now=True),
    _timestamp("available_at", nullable=True),
    _timestamp("expires_at", nullable=True),
    # The member's balance right after the posting (the transaction object's balance_after).
    Column("available_after", BigInteger, nullable=True),
    Column("held_after", BigInteger, nullable=True),
    Column("pending_after", BigInteger, nullable=True),
    # The partner terms version the posting was priced with (disputes, price changes).
    Column("terms_version", Integer, nullable=True),
    # What an earn was for, when the partner sent a purchase (disputes).
    Column("purchase_amount", MONEY, nullable=True),
    Column("purchase_currency", String(3), nullable=True),
    # The request that made the posting (migration 0014, REQUEST_COLUMNS), on its row: its
    # idempotency key with the response stored under it (contract 2.2; all NULL without a
    # key, and after the member's erasure), and the verified signature (exchange audit).
    Column("idempotency_key", String(255), nullable=True),
    Column("request_fingerprint", LargeBinary, nullable=True),  # sha256(method, path, body)
    Column("response_status", SmallInteger, nullable=True),
    Column("response", LargeBinary, nullable=True),
    Column("signature_key_id", ID, nullable=True),
    Column("signature_input", Text, nullable=True),
    Column("signature", Text, nullable=True),
    Column("content_digest", Text, nullable=True),
    Column("signature_base", LargeBinary, nullable=True),
    # A posting made from a batch file: the batch whose stored signature is its evidence
    # (checked per statement, migration 0020), instead of a copy of it on every posting.
    Column("batch_id", ID, nullable=True),
    CheckConstraint("points > 0", name="points"),
    CheckConstraint(
        "(idempotency_key IS NULL) = (request_fingerprint IS NULL) "
        "AND (idempotency_key IS NULL) = (response_status IS NULL) "
        "AND (idempotency_key IS NULL) = (response IS NULL) "
        "AND (idempotency_key IS NULL OR partner_id IS NOT NULL)",
        name="request",
    ),
    CheckConstraint(
        "(signature IS NULL) = (signature_key_id IS NULL) "
        "AND (signature IS NULL) = (signature_input IS NULL) "
        "AND (signature IS NULL) = (signature_base IS NULL) "
        "AND (signature IS NOT NULL OR content_digest IS NULL)",
        name="signature",
    ),
    CheckConstraint("batch_id IS NULL OR signature IS NULL", name="evidence"),
    CheckConstraint(
        "type <> 'adjustment' OR (partner_id IS NOT NULL AND unit_price IS NOT NULL)",
        name="adjustment",
    ),
    CheckConstraint(_in("type", POSTING_TYPES), name="type"),
    CheckConstraint(
        "type NOT IN ('earn', 'burn', 'earn_reversal', 'burn_reversal') "
        "OR (partner_id IS NOT NULL AND unit_price IS NOT NULL AND currency IS NOT NULL)",
        name="priced",
    ),
    CheckConstraint(
        "(type IN ('earn_reversal', 'burn_reversal')) = (reverses IS NOT NULL)", name="reverses"
    ),
    Index(
        "ix_postings_partner_id_posted_at",
        "partner_id",
        text("posted_at DESC"),
        text("posting_id DESC"),
    ),
    Index(
        "ix_postings_member_id_posted_at",
        "member_id",
        text("posted_at DESC"),
        text("posting_id DESC"),
    ),
    Index(
        "ix_postings_partner_id_reference",
        "partner_id",
        "reference",
        postgresql_where=text("reference IS NOT NULL"),
    ),
    # A partner's key names one posting at most; the claim finds the stored response by it.
    Index(
        "uq_postings_partner_id_idempotency_key",
        "partner_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("ix_postings_reverses", "reverses", postgresql_where=text("reverses IS NOT NULL")),
    Index("ix_postings_posted_at", "posted_at"),
    # A member's qualifying points (tiers) and 30-day transfer total: index-only sums.
    Index(
        "ix_postings_member_id_earned",
        "member_id",
        "posted_at",
        postgresql_where=text("type = 'earn'"),
        postgresql_include=["points"],
    ),
    Index(
        "ix_postings_member_id_earn_reversed",
        "member_id",
        postgresql_where=text("type = 'earn_reversal'"),
        postgresql_include=["reverses", "points"],
    ),
    Index(
        "ix_postings_member_id_transferred",
        "member_id",
        "posted_at",
        postgresql_where=text("type = 'transfer_out'"),
        postgresql_include=["points"],
    ),
)

entries = Table(
    "entries",
    metadata,
    Column("posting_id", Uuid, nullable=False),  # checked per statement (migration 0016)
    Column("line", SmallInteger, nullable=False),
    Column("account", String(16), nullable=False),
    Column("owner", ID, nullable=False),
    Column("amount", BigInteger, nullable=False),
    _timestamp("posted_at"),
    PrimaryKeyConstraint("posting_id", "line"),
    CheckConstraint("amount <> 0", name="amount"),
    CheckConstraint(_in("account", ACCOUNTS), name="account"),
    Index("ix_entries_posted_at", "posted_at"),
)

lots = Table(
    "lots",
    metadata,
    Column("lot_id", Uuid, primary_key=True),
    # Its member, issuer, posting and source lot: checked per statement (migration 0016).
    Column("member_id", ID, nullable=False),
    Column("issuer_id", ID, nullable=False),
    # The posting that created the lot: its earn, or the transfer_in that moved it here.
    Column("earn_id", Uuid, nullable=False),
    Column("initial", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("unit_price", PRICE, nullable=False),
    _timestamp("available_at"),
    _timestamp("expires_at"),
    Column("matured", Boolean, nullable=False),
    _timestamp("created_at"),
    # A transferred lot: the sender's lot it came from (same issuer, price and expiry).
    Column("source_lot_id", Uuid, nullable=True),
    CheckConstraint("remaining >= 0 AND remaining <= initial", name="remaining"),
    CheckConstraint("expires_at > available_at", name="dates"),
    # A member's open lots: what a posting for that member loads.
    Index(
        "ix_lots_member_id_open", "member_id", postgresql_where=text("remaining > 0 OR NOT matured")
    ),
    # Lots still holding points, by expiry: the sweep and the liability ageing.
    Index(
        "ix_lots_expires_at_open", "expires_at", "issuer_id", postgresql_where=text("remaining > 0")
    ),
    Index("ix_lots_available_at_pending", "available_at", postgresql_where=text("NOT matured")),
    # One lot per earn (source_lot_id NULL, and NULLs equal here); a transfer_in creates
    # one lot per source lot. The same index finds a posting's lots by earn_id.
    Index(
        "uq_lots_earn_id_source_lot_id",
        "earn_id",
        "source_lot_id",
        unique=True,
        postgresql_nulls_not_distinct=True,
    ),
)

allocations = Table(
    "allocations",
    metadata,
    Column("posting_id", Uuid, ForeignKey("postings.posting_id"), nullable=False),
    Column("lot_id", Uuid, ForeignKey("lots.lot_id"), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("points", BigInteger, nullable=False),
    PrimaryKeyConstraint("posting_id", "lot_id", "kind"),
    CheckConstraint("points > 0", name="points"),
    CheckConstraint(_in("kind", ALLOCATION_KINDS), name="kind"),
    Index("ix_allocations_lot_id", "lot_id"),
)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", Uuid, primary_key=True),
    Column("member_id", ID, ForeignKey("members.member_id"), nullable=False),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reference", String(128), nullable=True),
    Column("hold_posting_id", Uuid, ForeignKey("postings.posting_id"), nullable=False),
    Column("transaction_id", Uuid, ForeignKey("postings.posting_id"), nullable=True),
    Column("captured_points", BigInteger, nullable=True),
    _timestamp("created_at"),
    _timestamp("expires_at"),
    _timestamp("closed_at", nullable=True),
    CheckConstraint("points > 0", name="points"),
    CheckConstraint(_in("status", HOLD_STATUSES), name="status"),
    CheckConstraint("(status = 'open') = (closed_at IS NULL)", name="closed"),
    Index("ix_holds_member_id_open", "member_id", postgresql_where=text("status = 'open'")),
    Index("ix_holds_expires_at_open", "expires_at", postgresql_where=text("status = 'open'")),
)

# -- exactly once, and proof of who asked -----------------------------------------------------

# A stored response whose request made no posting of its own on the posting path
# (enrolment, sessions, batch acceptance, webhook retries, operators' POSTs), and every
# record stored before migration 0014 moved the posting path's onto the posting row.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("key", String(255), nullable=False),
    Column("fingerprint", LargeBinary, nullable=False),  # sha256(method, path, body)
    Column("status_code", SmallInteger, nullable=False),
    Column("response", LargeBinary, nullable=False),
    Column("posting_id", Uuid, ForeignKey("postings.posting_id"), nullable=True),
    _timestamp("created_at", default_now=True),
    PrimaryKeyConstraint("partner_id", "key"),
)

# -- views (migration 0014): read-only names for what now lives on other rows ---------------

# Views are not tables: they are described on their own MetaData, which Alembic's
# comparison of tables does not see. Their SQL is in migration 0014.
views = MetaData()

# Every partner key's stored response: `idempotency_records` and the keyed postings.
idempotency_keys = Table(
    "idempotency_keys",
    views,
    Column("partner_id", ID),
    Column("key", String(255)),
    Column("fingerprint", LargeBinary),
    Column("status_code", SmallInteger),
    Column("response", LargeBinary),
    Column("posting_id", Uuid),
    Column("created_at", DateTime(timezone=True)),
)

# The verified signature of each signed posting, as `exchange audit` reads it: its own,
# or its batch file's.
posting_signatures = Table(
    "posting_signatures",
    views,
    Column("posting_id", Uuid),
    Column("key_id", ID),
    Column("signature_input", Text),
    Column("signature", Text),
    Column("content_digest", Text),
    Column("signature_base", LargeBinary),
)

# One row: the journal is closed before `closed_until` (moved only by settlement).
ledger_state = Table(
    "ledger_state",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    _timestamp("closed_until"),
    CheckConstraint("id = 1", name="singleton"),
)

# -- operator adjustments (migration 0006) -----------------------------------------------------

# Requested by one operator token, posted only when a different token approves it (four
# eyes; the database refuses the same token in both columns). Once posted it names its
# `adjustment` posting; a pending one expires after ADJUSTMENT_PENDING_DAYS.
adjustments = Table(
    "adjustments",
    metadata,
    Column("adjustment_id", ID, primary_key=True),
    Column("member_id", ID, ForeignKey("members.member_id"), nullable=False),
    Column("issuer_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("points", BigInteger, nullable=False),  # signed: + credit, - debit
    Column("reason", String(500), nullable=False),
    Column("status", String(16), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("requested_token_id", String(32), nullable=False),
    _timestamp("requested_at"),
    _timestamp("expires_at"),
    Column("approved_by", String(128), nullable=True),
    Column("approved_token_id", String(32), nullable=True),
    _timestamp("approved_at", nullable=True),
    Column("posting_id", Uuid, ForeignKey("postings.posting_id"), nullable=True),
    CheckConstraint("points <> 0", name="points"),
    CheckConstraint("status IN ('pending', 'posted', 'expired')", name="status"),
    CheckConstraint("(status = 'posted') = (posting_id IS NOT NULL)", name="posted"),
    CheckConstraint(
        "approved_token_id IS NULL OR approved_token_id <> requested_token_id", name="four_eyes"
    ),
    Index("ix_adjustments_member_id", "member_id"),
)


# Events for partners, written in the database transaction of the fact they report; the
# delivery worker (contract §10) reads from here. Shared by settlement (statement.ready),
# members (member.points_expiring) and partners (key.revoked, batch.completed).
webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("event_id", ID, primary_key=True),
    Column("partner_id", ID, ForeignKey("partners.partner_id"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("data", JSONB, nullable=False),
    # Events that must be written once only (a reminder per member, lot and day count)
    # carry a key; the unique constraint makes a repeated sweep a no-op.
    Column("dedupe_key", Text, nullable=True, unique=True),
    # The writing database transaction's id (xid8 as bigint), set by the database: the
    # webhook worker's fan-out cursor (partners.webhooks.store.fan_out) walks
    # (tx_id, event_id) and trusts only ids below every running transaction's.
    Column(
        "tx_id",
        BigInteger,
        nullable=False,
        server_default=text("(pg_current_xact_id()::text)::bigint"),
    ),
)
Index(
    "ix_webhook_outbox_partner_id_created_at",
    webhook_outbox.c.partner_id,
    webhook_outbox.c.created_at,
)
Index("ix_webhook_outbox_tx_id_event_id", webhook_outbox.c.tx_id, webhook_outbox.c.event_id)
