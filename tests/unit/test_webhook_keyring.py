"""The key-encryption keys of the exchange's webhook signing keys: configuration, sealing
with the key id as associated data, rotation, and what happens with no secret."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from exchange.config import ConfigError, Settings
from partners.webhooks.keyring import (
    KeyRing,
    KeySecretMissing,
    KeySecretUnknown,
    development_secret_file,
    kek_id,
)

OLD, NEW = bytes(range(32)), bytes(range(32, 64))
PRIVATE = b"\x07" * 32


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_secrets_are_read_first_one_current_in_either_base64_alphabet() -> None:
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    settings = Settings.from_env({"EXCHANGE_WEBHOOK_KEY_SECRET": f"{_b64(NEW)}, {urlsafe}"})
    assert settings.webhook_key_secret == (NEW, b"\xfb" * 32)
    assert KeyRing.for_settings(settings).current == kek_id(NEW)
    assert _b64(NEW) not in repr(settings)  # never in a log line


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not base64!", "must be base64"),
        (_b64(b"short"), "32 bytes"),
        (f"{_b64(NEW)},{_b64(NEW)}", "listed twice"),
        (" , ", "at least one"),
    ],
)
def test_a_bad_secret_stops_start_up_naming_the_variable(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"EXCHANGE_WEBHOOK_KEY_SECRET": value})
    assert "EXCHANGE_WEBHOOK_KEY_SECRET=(hidden)" in str(caught.value)  # a secret: not echoed
    assert expected in str(caught.value)


def test_the_secret_file_is_checked_at_start_and_read_by_the_keyring(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    path.write_text(f"{_b64(NEW)}\n{_b64(OLD)}\n")
    settings = Settings.from_env({"EXCHANGE_WEBHOOK_KEY_SECRET_FILE": str(path)})
    assert KeyRing.for_settings(settings).current == kek_id(NEW)
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_env({"EXCHANGE_WEBHOOK_KEY_SECRET_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env(
            {
                "EXCHANGE_WEBHOOK_KEY_SECRET_FILE": str(path),
                "EXCHANGE_WEBHOOK_KEY_SECRET": _b64(NEW),
            }
        )


def test_a_sealed_key_opens_only_under_its_own_key_id() -> None:
    ring = KeyRing((NEW,))
    sealed_by, stored = ring.seal("exk_a", PRIVATE)
    assert sealed_by == kek_id(NEW)
    assert PRIVATE not in stored
    assert len(stored) == 12 + 32 + 16  # nonce, ciphertext, tag
    assert ring.open("exk_a", sealed_by, stored) == PRIVATE
    with pytest.raises(KeySecretUnknown, match="damaged or belongs to another key"):
        ring.open("exk_b", sealed_by, stored)  # the row's ciphertext moved onto another key
    tampered = stored[:-1] + bytes([stored[-1] ^ 1])
    with pytest.raises(KeySecretUnknown):
        ring.open("exk_a", sealed_by, tampered)


def test_rotation_old_keys_open_while_listed_and_new_seals_use_the_first() -> None:
    _, stored = KeyRing((OLD,)).seal("exk_a", PRIVATE)
    both = KeyRing((NEW, OLD))
    assert both.open("exk_a", kek_id(OLD), stored) == PRIVATE
    assert both.seal("exk_a", PRIVATE)[0] == kek_id(NEW)
    with pytest.raises(KeySecretUnknown, match=kek_id(OLD)) as caught:
        KeyRing((NEW,)).open("exk_a", kek_id(OLD), stored)
    assert "rewrap-keys" in str(caught.value)


def test_no_secret_with_an_external_database_refuses_with_a_clear_message() -> None:
    settings = Settings(database_url="postgresql://db.example/exchange")
    with pytest.raises(KeySecretMissing) as caught:
        KeyRing.for_settings(settings)
    assert "EXCHANGE_WEBHOOK_KEY_SECRET" in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_the_embedded_database_gets_one_private_development_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = KeyRing.for_settings(Settings(data_dir=data_dir))
    again = KeyRing.for_settings(Settings(data_dir=data_dir))
    assert first.current == again.current  # made once, then reused
    path = development_secret_file(data_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == [path.name]  # no draft left behind
    _, stored = first.seal("exk_a", PRIVATE)
    assert again.open("exk_a", first.current, stored) == PRIVATE
