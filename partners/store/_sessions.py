"""Member sessions, spent nonces, and the signature evidence stored with postings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.tables import posting_signatures
from partners.tables import member_sessions, partner_keys, signature_nonces

__all__ = [
    "StoredSignature",
    "create_session",
    "find_session",
    "load_signature",
    "purge_nonces",
    "purge_sessions",
]


async def purge_nonces(conn: AsyncConnection, before: datetime) -> int:
    """Forget nonces older than the signature window: their requests are refused as
    expired anyway, so they can never be replayed. Pass `before = now - 300 s`; this is
    safe only because rows are stamped with max(arrival, `created`) (see partners.auth)."""
    result = await conn.execute(delete(signature_nonces).where(signature_nonces.c.seen_at < before))
    return result.rowcount or 0


async def create_session(
    conn: AsyncConnection,
    *,
    token_hash: str,
    member_id: str,
    partner_id: str,
    created_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        insert(member_sessions).values(
            token_hash=token_hash,
            member_id=member_id,
            partner_id=partner_id,
            created_at=created_at,
            expires_at=expires_at,
        )
    )


async def find_session(conn: AsyncConnection, token_hash: str, now: datetime) -> str | None:
    """The member of an unexpired session token, or None."""
    row = (
        await conn.execute(
            select(member_sessions.c.member_id).where(
                member_sessions.c.token_hash == token_hash, member_sessions.c.expires_at > now
            )
        )
    ).first()
    return row.member_id if row else None


async def purge_sessions(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(member_sessions).where(member_sessions.c.expires_at <= now))
    return result.rowcount or 0


@dataclass(frozen=True, slots=True)
class StoredSignature:
    posting_id: uuid.UUID
    key_id: str
    partner_id: str
    public_key: bytes
    key_status: str
    signature_input: str
    signature: str
    content_digest: str | None
    signature_base: bytes


async def load_signature(conn: AsyncConnection, posting_id: uuid.UUID) -> StoredSignature | None:
    row = (
        await conn.execute(
            select(
                posting_signatures,
                partner_keys.c.partner_id,
                partner_keys.c.public_key,
                partner_keys.c.status.label("key_status"),
            )
            .join(partner_keys, partner_keys.c.key_id == posting_signatures.c.key_id)
            .where(posting_signatures.c.posting_id == posting_id)
        )
    ).first()
    if row is None:
        return None
    return StoredSignature(
        posting_id=row.posting_id,
        key_id=row.key_id,
        partner_id=row.partner_id,
        public_key=bytes(row.public_key),
        key_status=row.key_status,
        signature_input=row.signature_input,
        signature=row.signature,
        content_digest=row.content_digest,
        signature_base=bytes(row.signature_base),
    )
