"""The key-encryption keys (KEKs) that keep the exchange's webhook signing keys encrypted
at rest (envelope encryption).

Each Ed25519 private key is stored as `nonce || AES-256-GCM(kek, nonce, key, aad=key_id)`
beside the id of the KEK that sealed it (`exchange_keys.kek_id`, a fingerprint of the KEK,
never the KEK). AES-GCM rather than Fernet: it authenticates associated data, so a
ciphertext copied onto another key's row does not open, and it needs no second key for
the MAC. A key is sealed a handful of times in its life, so random 96-bit nonces are safe.

Where the KEKs come from (`KeyRing.for_settings`):

    EXCHANGE_WEBHOOK_KEY_SECRET / _FILE set   those keys; the first seals, every one opens
    unset, the embedded database              a development KEK, made once in
                                              EXCHANGE_DATA_DIR/webhook-key-secret (0600);
                                              `exchange serve` hands its workers that file
    unset, an external database               `KeySecretMissing`: no signing key is made or
                                              used (the worker logs it; events wait)

Rotating the KEK: list the new key first and the old one after it, run
`exchange webhooks rewrap-keys` (every private key re-sealed under the first KEK), then
drop the old one. A stored key sealed by a KEK no longer listed is `KeySecretUnknown`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange.config import WEBHOOK_KEY_SECRET_BYTES, ConfigError, Settings, parse_key_secrets

__all__ = [
    "DEVELOPMENT_SECRET_FILE",
    "KeyRing",
    "KeySecretMissing",
    "KeySecretUnknown",
    "development_secret_file",
    "kek_id",
]

DEVELOPMENT_SECRET_FILE = "webhook-key-secret"  # noqa: S105 - a file name, not a secret
NONCE_BYTES = 12


class KeySecretMissing(ConfigError):
    """No key-encryption key is configured for an external database."""

    def __init__(self) -> None:
        super().__init__(
            "No key-encryption key for the webhook signing keys: set "
            "EXCHANGE_WEBHOOK_KEY_SECRET (e.g. `openssl rand -base64 32`) or "
            "EXCHANGE_WEBHOOK_KEY_SECRET_FILE. Until then no signing key is made or used "
            "and webhook events wait in the outbox (none is lost)."
        )


class KeySecretUnknown(ConfigError):
    """A stored signing key was sealed by a key-encryption key that is not configured, or
    its ciphertext does not open (a wrong KEK under a right id cannot happen: the id is
    the KEK's fingerprint; so this is a damaged or moved row)."""


def kek_id(secret: bytes) -> str:
    """A KEK's public name: a truncated SHA-256 fingerprint (the KEK itself is never stored)."""
    digest = hashlib.sha256(b"coalition-exchange webhook kek\x00" + secret).hexdigest()
    return f"kek_{digest[:16]}"


class KeyRing:
    """Seals and opens private keys; the first KEK seals, any configured one opens."""

    def __init__(self, secrets_: tuple[bytes, ...]) -> None:
        if not secrets_ or any(len(s) != WEBHOOK_KEY_SECRET_BYTES for s in secrets_):
            raise ValueError(f"KEKs must be {WEBHOOK_KEY_SECRET_BYTES} bytes, at least one")
        self._keks = {kek_id(secret): AESGCM(secret) for secret in secrets_}
        self.current = kek_id(secrets_[0])

    @classmethod
    def for_settings(cls, settings: Settings) -> KeyRing:
        if settings.webhook_key_secret:
            return cls(settings.webhook_key_secret)
        if settings.webhook_key_secret_file is not None:
            text = settings.webhook_key_secret_file.read_text(encoding="ascii")
            return cls(parse_key_secrets(text))
        if settings.database_url is None:
            return cls((development_secret(settings.data_dir),))
        raise KeySecretMissing()

    def seal(self, key_id: str, private_key: bytes) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keks[self.current].encrypt(nonce, private_key, key_id.encode())
        return self.current, nonce + sealed

    def open(self, key_id: str, sealed_by: str | None, stored: bytes) -> bytes:
        if sealed_by is None:  # written before 0010: plaintext until re-sealed
            return stored
        kek = self._keks.get(sealed_by)
        if kek is None:
            raise KeySecretUnknown(
                f"Webhook signing key {key_id} is sealed by {sealed_by}, which is not among "
                f"the configured key-encryption keys ({', '.join(self._keks)}): add its "
                "secret to EXCHANGE_WEBHOOK_KEY_SECRET (after the new one) and run "
                "`exchange webhooks rewrap-keys`."
            )
        try:
            return kek.decrypt(stored[:NONCE_BYTES], stored[NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise KeySecretUnknown(
                f"Webhook signing key {key_id} does not open with {sealed_by}: the row is "
                "damaged or belongs to another key."
            ) from None


def development_secret(data_dir: Path) -> bytes:
    """The embedded database's KEK (see `development_secret_file`)."""
    return base64.b64decode(development_secret_file(data_dir).read_text(encoding="ascii"))


def development_secret_file(data_dir: Path) -> Path:
    """The embedded database's KEK file, beside its data: made once, atomically (several
    server processes may start together), readable by the exchange's user only."""
    path = data_dir / DEVELOPMENT_SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".{DEVELOPMENT_SECRET_FILE}.{secrets.token_hex(6)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(base64.b64encode(secrets.token_bytes(WEBHOOK_KEY_SECRET_BYTES)).decode())
        try:
            os.link(draft, path)  # fails if another process made it first: use theirs
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path
