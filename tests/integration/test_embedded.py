"""The embedded PostgreSQL is private to the server's user (issue 10, item 3).

Before: `--auth=trust` on a socket any local user could reach, a data folder with the
default umask, and a predictable /tmp socket folder: any local account was superuser.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from exchange.embedded import POSTGRES_BIN_PATH, SUPERUSER, EmbeddedPostgres


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _server_uid(postgres: EmbeddedPostgres) -> int:
    return (postgres.pgdata / "PG_VERSION").stat().st_uid


def test_the_data_folder_socket_folder_and_password_are_private(
    postgres: EmbeddedPostgres,
) -> None:
    uid = _server_uid(postgres)
    for folder in (postgres.data_dir, postgres.pgdata, postgres.socket_dir):
        assert _mode(folder) == 0o700, folder
        assert folder.stat().st_uid == uid, folder
    password_file = postgres.data_dir / "superuser.password"
    assert _mode(password_file) == 0o600
    assert len(postgres.password) >= 40
    socket = postgres.socket_dir / ".s.PGSQL.5432"
    assert _mode(socket) == 0o700
    assert "trust" not in (postgres.pgdata / "pg_hba.conf").read_text()


async def test_a_connection_without_the_password_is_refused(postgres: EmbeddedPostgres) -> None:
    host = str(postgres.socket_dir)
    with pytest.raises(
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
    ):
        await asyncpg.connect(host=host, user=SUPERUSER, database="postgres", password="wrong")
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
        await asyncpg.connect(host=host, user=SUPERUSER, database="postgres", password="")
    # With the password (what url() carries) it works.
    conn = await asyncpg.connect(postgres.url("postgres"))
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert urlsplit(postgres.url()).password == postgres.password


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_reach_the_database(postgres: EmbeddedPostgres) -> None:
    nobody = pwd.getpwnam("nobody")
    command = [
        str(POSTGRES_BIN_PATH / "psql"),
        "-X",
        "-w",
        "-h",
        str(postgres.socket_dir),
        "-U",
        SUPERUSER,
        "-d",
        "postgres",
        "-c",
        "SELECT 1",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, user=nobody.pw_uid, cwd="/", check=False
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr or "password" in result.stderr
    # Not even the password file can be read by that user.
    read = subprocess.run(
        ["cat", str(postgres.data_dir / "superuser.password")],
        capture_output=True,
        user=nobody.pw_uid,
        cwd="/",
        check=False,
    )
    assert read.returncode != 0


def test_a_long_data_path_gets_an_unpredictable_private_socket_folder(tmp_path: Path) -> None:
    """The old fallback was /tmp/exchange-pg-<sha256 of the path>: another user could
    create it first and own the socket folder. It is now made by mkdtemp."""
    data_dir = tmp_path / ("d" * 90)
    predictable = Path("/tmp") / (
        "exchange-pg-" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    )
    predictable.mkdir(mode=0o777, exist_ok=True)  # as an attacker would, ahead of time
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        server.start()
        socket_dir = server.socket_dir
        assert socket_dir != predictable
        assert socket_dir.parent == Path(tempfile.gettempdir())
        assert _mode(socket_dir) == 0o700
        assert socket_dir.stat().st_uid == _server_uid(server)
        assert server.psql("SELECT 1", "postgres").strip() == "1"
    finally:
        server.stop()
        predictable.rmdir()


async def test_a_cluster_made_with_trust_gets_a_password_at_its_next_start(
    tmp_path: Path,
) -> None:
    """Data folders initialised by the old code (trust, no password file) are closed at
    the next start: a password is set in single-user mode and pg_hba.conf rewritten."""
    server = EmbeddedPostgres(tmp_path / "old", durable=False)
    server.start()
    server.stop()
    (server.pgdata / "pg_hba.conf").write_text("local all all trust\n")
    (server.data_dir / "superuser.password").unlink()
    try:
        server.start()
        assert "trust" not in (server.pgdata / "pg_hba.conf").read_text()
        with pytest.raises(asyncpg.PostgresError):
            await asyncpg.connect(
                host=str(server.socket_dir), user=SUPERUSER, database="postgres", password="x"
            )
        conn = await asyncpg.connect(server.url("postgres"))
        await conn.close()
    finally:
        server.stop()
