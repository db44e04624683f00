"""The `exchange` command as an operator runs it: real processes, real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.operators import authenticate_operator
from tests.servers import EXCHANGE, free_port, server_env, serving, wait_ready


def _postgres_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_is_ready_within_30_s_and_shares_its_data_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first_port, second_port = free_port(), free_port()
    with serving(data_dir, first_port) as first:
        assert wait_ready(first_port, first) < 30
        with serving(data_dir, second_port) as second:
            wait_ready(second_port, second)
            first.terminate()
            first.wait(timeout=30)
            # The second server still has its database: the first did not stop it.
            response = httpx.get(f"http://127.0.0.1:{second_port}/ready", timeout=5)
            assert response.status_code == 200
        assert second.returncode == 0 or second.returncode == -15
    assert not _postgres_running(data_dir), "the last server to leave stops PostgreSQL"
    # Data survives a restart.
    assert (data_dir / "pg" / "PG_VERSION").exists()
    with serving(data_dir, first_port) as again:
        wait_ready(first_port, again)


def test_unreachable_database_is_a_clear_error_and_non_zero_exit() -> None:
    result = subprocess.run(
        [*EXCHANGE, "serve", "--port", str(free_port())],
        env=server_env(EXCHANGE_DATABASE_URL="postgresql://nobody@127.0.0.1:9/none"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "cannot connect to postgresql://nobody@127.0.0.1:9/none" in result.stderr


def test_bad_setting_stops_start_up_naming_the_variable() -> None:
    result = subprocess.run(
        [*EXCHANGE, "serve"],
        env=server_env(EXCHANGE_POINTS_TTL_DAYS="forever"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "EXCHANGE_POINTS_TTL_DAYS='forever' is not valid" in result.stderr


@pytest.mark.usefixtures("engine")
async def test_tokens_create_list_revoke(database_url: str, engine: AsyncEngine) -> None:
    env = server_env(EXCHANGE_DATABASE_URL=database_url)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*EXCHANGE, "tokens", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    created = run("create", "--role", "finance", "--name", "fiona")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    identity = await authenticate_operator(engine, token)
    assert identity is not None
    assert identity.role == "finance"
    assert identity.name == "fiona"

    listed = run("list")
    assert identity.token_id in listed.stdout
    assert token not in listed.stdout, "the token itself is never shown again"

    assert run("revoke", identity.token_id).returncode == 0
    assert await authenticate_operator(engine, token) is None
    missing = run("revoke", "opt_nope")
    assert missing.returncode != 0
    assert "No operator token opt_nope" in missing.stderr
