"""SQLAlchemy table definitions: the one MetaData that Alembic migrations must match.

Every package's tables are registered on this MetaData (partners and settlement import
it), so `alembic check` compares the whole schema in one pass.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    func,
)

__all__ = ["metadata", "operator_tokens"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


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
