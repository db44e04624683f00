"""Re-verifying a disputed posting: its stored signature base against the partner's key."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.ids import parse_transaction_id
from partners import store
from partners.signing import decode_signature_member, verify_signature_base

__all__ = ["AuditResult", "verify_transaction"]


@dataclass(frozen=True, slots=True)
class AuditResult:
    transaction_id: str
    valid: bool
    reason: str
    key_id: str | None = None
    partner_id: str | None = None
    signature_input: str | None = None
    content_digest: str | None = None
    signature_base: str | None = None

    def describe(self) -> str:
        if self.key_id is None:
            return f"{self.transaction_id}: {self.reason}"
        verdict = "VALID" if self.valid else "INVALID"
        return "\n".join(
            [
                f"{self.transaction_id}: signature {verdict} ({self.reason})",
                f"partner {self.partner_id}, key {self.key_id}",
                f"Signature-Input: {self.signature_input}",
                f"Content-Digest: {self.content_digest or '(no body)'}",
                "signature base:",
                self.signature_base or "",
            ]
        )


async def verify_transaction(engine: AsyncEngine, transaction_id: str) -> AuditResult:
    posting_id = parse_transaction_id(transaction_id)
    if posting_id is None:
        return AuditResult(transaction_id, False, "not a transaction id")
    async with engine.connect() as conn:
        stored = await store.load_signature(conn, posting_id)
    if stored is None:
        return AuditResult(transaction_id, False, "no stored signature for this transaction")
    valid = verify_signature_base(
        stored.signature_base, decode_signature_member(stored.signature), stored.public_key
    )
    state = "key revoked since" if stored.key_status == "revoked" else "key active"
    reason = f"Ed25519 over the stored signature base, {state}"
    return AuditResult(
        transaction_id,
        valid,
        reason,
        key_id=stored.key_id,
        partner_id=stored.partner_id,
        signature_input=stored.signature_input,
        content_digest=stored.content_digest,
        signature_base=stored.signature_base.decode("latin-1"),
    )
