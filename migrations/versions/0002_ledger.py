"""Ledger: partners and terms, members, the journal, lots, holds, idempotency.

Also installs the database's own guards of the ledger's invariants (see
exchange/tables.py): append-only journal and allocations, balanced postings,
and no posting stamped inside a closed settlement period.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_state",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("closed_until", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ledger_state_singleton")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_state")),
    )
    op.create_table(
        "partners",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("settlement_currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column("terms_version", sa.Integer(), nullable=False),
        sa.Column("issue_price", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("redemption_value", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column(
            "earn_rates",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("credit_limit", sa.Numeric(precision=28, scale=6), nullable=True),
        sa.Column(
            "settled_issuance",
            sa.Numeric(precision=28, scale=6),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("status IN ('active', 'suspended')", name=op.f("ck_partners_status")),
        sa.CheckConstraint(
            "credit_limit IS NULL OR credit_limit >= 0", name=op.f("ck_partners_credit_limit")
        ),
        sa.CheckConstraint(
            "issue_price >= 0 AND redemption_value >= 0", name=op.f("ck_partners_prices")
        ),
        sa.PrimaryKeyConstraint("partner_id", name=op.f("pk_partners")),
    )
    op.create_table(
        "members",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("enrolled_by", sa.String(length=64), nullable=True),
        sa.Column("debt", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("debt >= 0", name=op.f("ck_members_debt")),
        sa.ForeignKeyConstraint(
            ["enrolled_by"], ["partners.partner_id"], name=op.f("fk_members_enrolled_by_partners")
        ),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_members")),
    )
    op.create_table(
        "partner_counters",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column(
            "issued_value", sa.Numeric(precision=28, scale=6), server_default="0", nullable=False
        ),
        sa.Column("liability_points", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "liability_value", sa.Numeric(precision=28, scale=6), server_default="0", nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_partner_counters_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("partner_id", "shard", name=op.f("pk_partner_counters")),
    )
    op.create_table(
        "partner_terms",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("effective_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issue_price", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("redemption_value", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("earn_rates", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("credit_limit", sa.Numeric(precision=28, scale=6), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_partner_terms_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("partner_id", "version", name=op.f("pk_partner_terms")),
    )
    op.create_table(
        "member_links",
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column(
            "linked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_member_links_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_member_links_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("member_id", "partner_id", name=op.f("pk_member_links")),
    )
    op.create_table(
        "postings",
        sa.Column("posting_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("reverses", sa.Uuid(), nullable=True),
        sa.Column("hold_id", sa.Uuid(), nullable=True),
        sa.Column("unit_price", sa.Numeric(precision=18, scale=6), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("available_after", sa.BigInteger(), nullable=True),
        sa.Column("held_after", sa.BigInteger(), nullable=True),
        sa.Column("pending_after", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "(type IN ('earn_reversal', 'burn_reversal')) = (reverses IS NOT NULL)",
            name=op.f("ck_postings_reverses"),
        ),
        sa.CheckConstraint(
            "type IN ('earn', 'burn', 'earn_reversal', 'burn_reversal', 'hold', 'hold_release', 'expiry', 'maturation')",
            name=op.f("ck_postings_type"),
        ),
        sa.CheckConstraint(
            "type NOT IN ('earn', 'burn', 'earn_reversal', 'burn_reversal') OR (partner_id IS NOT NULL AND unit_price IS NOT NULL AND currency IS NOT NULL)",
            name=op.f("ck_postings_priced"),
        ),
        sa.CheckConstraint("points > 0", name=op.f("ck_postings_points")),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_postings_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.partner_id"], name=op.f("fk_postings_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["reverses"], ["postings.posting_id"], name=op.f("fk_postings_reverses_postings")
        ),
        sa.PrimaryKeyConstraint("posting_id", name=op.f("pk_postings")),
    )
    op.create_index(
        "ix_postings_member_id_posted_at",
        "postings",
        ["member_id", sa.literal_column("posted_at DESC"), sa.literal_column("posting_id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_postings_partner_id_posted_at",
        "postings",
        ["partner_id", sa.literal_column("posted_at DESC"), sa.literal_column("posting_id DESC")],
        unique=False,
    )
    op.create_index(
        "ix_postings_partner_id_reference",
        "postings",
        ["partner_id", "reference"],
        unique=False,
        postgresql_where=sa.text("reference IS NOT NULL"),
    )
    op.create_index("ix_postings_posted_at", "postings", ["posted_at"], unique=False)
    op.create_index(
        "ix_postings_reverses",
        "postings",
        ["reverses"],
        unique=False,
        postgresql_where=sa.text("reverses IS NOT NULL"),
    )
    op.create_table(
        "entries",
        sa.Column("posting_id", sa.Uuid(), nullable=False),
        sa.Column("line", sa.SmallInteger(), nullable=False),
        sa.Column("account", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "account IN ('available', 'held', 'pending', 'issued', 'redeemed', 'breakage')",
            name=op.f("ck_entries_account"),
        ),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_entries_amount")),
        sa.ForeignKeyConstraint(
            ["posting_id"], ["postings.posting_id"], name=op.f("fk_entries_posting_id_postings")
        ),
        sa.PrimaryKeyConstraint("posting_id", "line", name=op.f("pk_entries")),
    )
    op.create_index("ix_entries_posted_at", "entries", ["posted_at"], unique=False)
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.Uuid(), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("hold_posting_id", sa.Uuid(), nullable=False),
        sa.Column("transaction_id", sa.Uuid(), nullable=True),
        sa.Column("captured_points", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("(status = 'open') = (closed_at IS NULL)", name=op.f("ck_holds_closed")),
        sa.CheckConstraint(
            "status IN ('open', 'captured', 'voided', 'expired')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint("points > 0", name=op.f("ck_holds_points")),
        sa.ForeignKeyConstraint(
            ["hold_posting_id"],
            ["postings.posting_id"],
            name=op.f("fk_holds_hold_posting_id_postings"),
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_holds_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"], ["partners.partner_id"], name=op.f("fk_holds_partner_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["postings.posting_id"],
            name=op.f("fk_holds_transaction_id_postings"),
        ),
        sa.PrimaryKeyConstraint("hold_id", name=op.f("pk_holds")),
    )
    op.create_index(
        "ix_holds_expires_at_open",
        "holds",
        ["expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index(
        "ix_holds_member_id_open",
        "holds",
        ["member_id"],
        unique=False,
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("posting_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_idempotency_keys_partner_id_partners"),
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["postings.posting_id"],
            name=op.f("fk_idempotency_keys_posting_id_postings"),
        ),
        sa.PrimaryKeyConstraint("partner_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "lots",
        sa.Column("lot_id", sa.Uuid(), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("earn_id", sa.Uuid(), nullable=False),
        sa.Column("initial", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("unit_price", sa.Numeric(precision=18, scale=6), nullable=False),
        sa.Column("available_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matured", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("expires_at > available_at", name=op.f("ck_lots_dates")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= initial", name=op.f("ck_lots_remaining")
        ),
        sa.ForeignKeyConstraint(
            ["earn_id"], ["postings.posting_id"], name=op.f("fk_lots_earn_id_postings")
        ),
        sa.ForeignKeyConstraint(
            ["issuer_id"], ["partners.partner_id"], name=op.f("fk_lots_issuer_id_partners")
        ),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_lots_member_id_members")
        ),
        sa.PrimaryKeyConstraint("lot_id", name=op.f("pk_lots")),
        sa.UniqueConstraint("earn_id", name=op.f("uq_lots_earn_id")),
    )
    op.create_index(
        "ix_lots_available_at_pending",
        "lots",
        ["available_at"],
        unique=False,
        postgresql_where=sa.text("NOT matured"),
    )
    op.create_index(
        "ix_lots_expires_at_open",
        "lots",
        ["expires_at", "issuer_id"],
        unique=False,
        postgresql_where=sa.text("remaining > 0"),
    )
    op.create_index(
        "ix_lots_member_id_open",
        "lots",
        ["member_id"],
        unique=False,
        postgresql_where=sa.text("remaining > 0 OR NOT matured"),
    )
    op.create_table(
        "posting_signatures",
        sa.Column("posting_id", sa.Uuid(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature_input", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("content_digest", sa.Text(), nullable=True),
        sa.Column("signature_base", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["postings.posting_id"],
            name=op.f("fk_posting_signatures_posting_id_postings"),
        ),
        sa.PrimaryKeyConstraint("posting_id", name=op.f("pk_posting_signatures")),
    )
    op.create_table(
        "allocations",
        sa.Column("posting_id", sa.Uuid(), nullable=False),
        sa.Column("lot_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('draw', 'release', 'repay')", name=op.f("ck_allocations_kind")
        ),
        sa.CheckConstraint("points > 0", name=op.f("ck_allocations_points")),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["lots.lot_id"], name=op.f("fk_allocations_lot_id_lots")
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"], ["postings.posting_id"], name=op.f("fk_allocations_posting_id_postings")
        ),
        sa.PrimaryKeyConstraint("posting_id", "lot_id", "kind", name=op.f("pk_allocations")),
    )
    op.create_index("ix_allocations_lot_id", "allocations", ["lot_id"], unique=False)

    _install_guards()


GUARDED_TABLES = ("postings", "entries", "allocations", "posting_signatures")

# ledger_check_balanced: every posting touched by a statement balances, counting all
# its entries. ledger_check_open_period: a closed settlement period never changes, so
# nothing may be stamped before ledger_state.closed_until.
GUARDS_SQL = """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced uuid;
BEGIN
    -- One primary-key range per posting touched (never a scan of the whole journal).
    SELECT touched.posting_id INTO unbalanced
    FROM (SELECT DISTINCT posting_id FROM new_entries) AS touched
    WHERE (SELECT sum(e.amount) FROM entries AS e WHERE e.posting_id = touched.posting_id) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'posting % does not balance', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_balanced AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_check_open_period() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    closed timestamptz;
    earliest timestamptz;
BEGIN
    SELECT closed_until INTO closed FROM ledger_state WHERE id = 1;
    SELECT min(posted_at) INTO earliest FROM new_postings;
    IF earliest < closed THEN
        RAISE EXCEPTION 'posting stamped % falls in a closed settlement period (closed until %)',
            earliest, closed USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER postings_open_period AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_open_period();

INSERT INTO ledger_state (id, closed_until) VALUES (1, '1970-01-01T00:00:00Z');
"""


def _install_guards() -> None:
    # asyncpg runs one statement per call: split on the blank lines between them.
    for statement in GUARDS_SQL.split("\n\n"):
        if statement.strip():
            op.execute(statement)
    for table in GUARDED_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )


def downgrade() -> None:
    op.drop_index("ix_allocations_lot_id", table_name="allocations")
    op.drop_table("allocations")
    op.drop_table("posting_signatures")
    op.drop_index(
        "ix_lots_member_id_open",
        table_name="lots",
        postgresql_where=sa.text("remaining > 0 OR NOT matured"),
    )
    op.drop_index(
        "ix_lots_expires_at_open", table_name="lots", postgresql_where=sa.text("remaining > 0")
    )
    op.drop_index(
        "ix_lots_available_at_pending", table_name="lots", postgresql_where=sa.text("NOT matured")
    )
    op.drop_table("lots")
    op.drop_table("idempotency_keys")
    op.drop_index(
        "ix_holds_member_id_open", table_name="holds", postgresql_where=sa.text("status = 'open'")
    )
    op.drop_index(
        "ix_holds_expires_at_open", table_name="holds", postgresql_where=sa.text("status = 'open'")
    )
    op.drop_table("holds")
    op.drop_index("ix_entries_posted_at", table_name="entries")
    op.drop_table("entries")
    op.drop_index(
        "ix_postings_reverses",
        table_name="postings",
        postgresql_where=sa.text("reverses IS NOT NULL"),
    )
    op.drop_index("ix_postings_posted_at", table_name="postings")
    op.drop_index(
        "ix_postings_partner_id_reference",
        table_name="postings",
        postgresql_where=sa.text("reference IS NOT NULL"),
    )
    op.drop_index("ix_postings_partner_id_posted_at", table_name="postings")
    op.drop_index("ix_postings_member_id_posted_at", table_name="postings")
    op.drop_table("postings")
    op.drop_table("member_links")
    op.drop_table("partner_terms")
    op.drop_table("partner_counters")
    op.drop_table("members")
    op.drop_table("partners")
    op.drop_table("ledger_state")
    op.execute("DROP FUNCTION ledger_refuse_change() CASCADE")
    op.execute("DROP FUNCTION ledger_check_balanced() CASCADE")
    op.execute("DROP FUNCTION ledger_check_open_period() CASCADE")
