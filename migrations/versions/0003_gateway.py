"""Gateway: partner keys, signature nonces, member sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signature_nonces",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "nonce", name=op.f("pk_signature_nonces")),
    )
    op.create_index("ix_signature_nonces_seen_at", "signature_nonces", ["seen_at"], unique=False)
    op.create_table(
        "partner_keys",
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('active', 'revoked')", name=op.f("ck_partner_keys_status")),
        sa.CheckConstraint(
            "octet_length(public_key) = 32", name=op.f("ck_partner_keys_public_key")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_partner_keys_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_partner_keys")),
    )
    op.create_index("ix_partner_keys_partner_id", "partner_keys", ["partner_id"], unique=False)
    op.create_table(
        "member_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["member_id"], ["members.member_id"], name=op.f("fk_member_sessions_member_id_members")
        ),
        sa.ForeignKeyConstraint(
            ["partner_id"],
            ["partners.partner_id"],
            name=op.f("fk_member_sessions_partner_id_partners"),
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_member_sessions")),
    )
    op.create_index(
        "ix_member_sessions_expires_at", "member_sessions", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_member_sessions_expires_at", table_name="member_sessions")
    op.drop_table("member_sessions")
    op.drop_index("ix_partner_keys_partner_id", table_name="partner_keys")
    op.drop_table("partner_keys")
    op.drop_index("ix_signature_nonces_seen_at", table_name="signature_nonces")
    op.drop_table("signature_nonces")
