"""Members v1.1: tiers, transfers, expiry reminders, data rights.

- `members.status` (`active` | `erased`) and `erased_at`: an erased member keeps its ledger
  amounts under the pseudonymous id; every request about it answers 404.
- `partners.tier_multipliers` / `partner_terms.tier_multipliers`: `{"gold": "1.5"}`.
- Posting types `transfer_out` / `transfer_in` and the clearing account `transfer`
  (owner: the transfer's id), so each of the two postings balances on its own.
- `lots.source_lot_id`: a lot created by a transfer names the lot it came from (issuer,
  price and expiry copied). Only lots created by an earn are unique per `earn_id`; the lots
  a transfer creates share their `transfer_in` posting as `earn_id`.
- Partial covering indexes that make a member's qualifying points an index-only sum.
- `member_idempotency_keys`: Idempotency-Key records of member-token POSTs (transfers).
- `webhook_outbox` with a unique `dedupe_key`: `member.points_expiring` events, written
  exactly once per (lot, N, partner).
- Erasure may set `postings.reference` to NULL, and nothing else, for the member being
  erased (the append-only trigger allows exactly that while `exchange.erasing_member`
  names the posting's member in the same database transaction).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD_TYPES = (
    "earn",
    "burn",
    "earn_reversal",
    "burn_reversal",
    "hold",
    "hold_release",
    "expiry",
    "maturation",
    "adjustment",
)
NEW_TYPES = (*OLD_TYPES, "transfer_out", "transfer_in")
OLD_ACCOUNTS = ("available", "held", "pending", "issued", "redeemed", "breakage", "adjusted")
NEW_ACCOUNTS = (*OLD_ACCOUNTS, "transfer")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


# The journal stays append-only; the one exception is erasure scrubbing a partner's
# reference off the erased member's postings (GDPR), nothing else in the row may change.
POSTINGS_GUARD_SQL = """
CREATE FUNCTION postings_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.reference IS NULL
       AND OLD.member_id = current_setting('exchange.erasing_member', true)
       AND to_jsonb(NEW) - 'reference' = to_jsonb(OLD) - 'reference' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$
"""


def upgrade() -> None:
    _members_and_partners()
    _journal()
    _new_tables()


def _members_and_partners() -> None:
    op.add_column(
        "members",
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
    )
    op.add_column("members", sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_check_constraint(
        op.f("ck_members_status"), "members", "status IN ('active', 'erased')"
    )
    for table in ("partners", "partner_terms"):
        op.add_column(
            table,
            sa.Column(
                "tier_multipliers",
                postgresql.JSONB(astext_type=sa.Text()),
                server_default=sa.text("'{}'::jsonb"),
                nullable=False,
            ),
        )


def _journal() -> None:
    op.drop_constraint(op.f("ck_postings_type"), "postings", type_="check")
    op.create_check_constraint(op.f("ck_postings_type"), "postings", _in("type", NEW_TYPES))
    op.drop_constraint(op.f("ck_entries_account"), "entries", type_="check")
    op.create_check_constraint(op.f("ck_entries_account"), "entries", _in("account", NEW_ACCOUNTS))
    op.create_index(
        "ix_postings_member_id_earned",
        "postings",
        ["member_id", "posted_at"],
        unique=False,
        postgresql_where=sa.text("type = 'earn'"),
        postgresql_include=["points"],
    )
    op.create_index(
        "ix_postings_member_id_earn_reversed",
        "postings",
        ["member_id"],
        unique=False,
        postgresql_where=sa.text("type = 'earn_reversal'"),
        postgresql_include=["reverses", "points"],
    )
    op.create_index(
        "ix_postings_member_id_transferred",
        "postings",
        ["member_id", "posted_at"],
        unique=False,
        postgresql_where=sa.text("type = 'transfer_out'"),
        postgresql_include=["points"],
    )
    op.add_column("lots", sa.Column("source_lot_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        op.f("fk_lots_source_lot_id_lots"), "lots", "lots", ["source_lot_id"], ["lot_id"]
    )
    op.drop_constraint(op.f("uq_lots_earn_id"), "lots", type_="unique")
    op.create_index(
        "uq_lots_earn_id",
        "lots",
        ["earn_id"],
        unique=True,
        postgresql_where=sa.text("source_lot_id IS NULL"),
    )
    op.create_index("ix_lots_earn_id", "lots", ["earn_id"], unique=False)
    op.execute(POSTINGS_GUARD_SQL)
    op.execute("DROP TRIGGER postings_append_only ON postings")
    op.execute(
        "CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings "
        "FOR EACH ROW EXECUTE FUNCTION postings_refuse_change()"
    )


def _new_tables() -> None:
    op.create_table(
        "member_idempotency_keys",
        sa.Column("member_id", sa.String(length=64), nullable=False),
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
            ["member_id"],
            ["members.member_id"],
            name=op.f("fk_member_idempotency_keys_member_id_members"),
        ),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["postings.posting_id"],
            name=op.f("fk_member_idempotency_keys_posting_id_postings"),
        ),
        sa.PrimaryKeyConstraint("member_id", "key", name=op.f("pk_member_idempotency_keys")),
    )
    # The outbox exists since 0005; reminders need a key that makes a repeated sweep a no-op.
    op.add_column("webhook_outbox", sa.Column("dedupe_key", sa.Text(), nullable=True))
    op.create_unique_constraint(
        op.f("uq_webhook_outbox_dedupe_key"), "webhook_outbox", ["dedupe_key"]
    )


def downgrade() -> None:
    op.drop_constraint(op.f("uq_webhook_outbox_dedupe_key"), "webhook_outbox", type_="unique")
    op.drop_column("webhook_outbox", "dedupe_key")
    op.drop_table("member_idempotency_keys")
    op.execute("DROP TRIGGER postings_append_only ON postings")
    op.execute(
        "CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings "
        "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
    )
    op.execute("DROP FUNCTION postings_refuse_change()")
    op.drop_index("ix_lots_earn_id", table_name="lots")
    op.drop_index("uq_lots_earn_id", table_name="lots")
    op.create_unique_constraint(op.f("uq_lots_earn_id"), "lots", ["earn_id"])
    op.drop_constraint(op.f("fk_lots_source_lot_id_lots"), "lots", type_="foreignkey")
    op.drop_column("lots", "source_lot_id")
    for index in (
        "ix_postings_member_id_transferred",
        "ix_postings_member_id_earn_reversed",
        "ix_postings_member_id_earned",
    ):
        op.drop_index(index, table_name="postings")
    op.drop_constraint(op.f("ck_entries_account"), "entries", type_="check")
    op.create_check_constraint(op.f("ck_entries_account"), "entries", _in("account", OLD_ACCOUNTS))
    op.drop_constraint(op.f("ck_postings_type"), "postings", type_="check")
    op.create_check_constraint(op.f("ck_postings_type"), "postings", _in("type", OLD_TYPES))
    for table in ("partner_terms", "partners"):
        op.drop_column(table, "tier_multipliers")
    op.drop_constraint(op.f("ck_members_status"), "members", type_="check")
    op.drop_column("members", "erased_at")
    op.drop_column("members", "status")
