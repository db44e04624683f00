"""The `exchange` command as an operator runs it: real processes, real PostgreSQL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.operators import authenticate_operator

EXCHANGE = [sys.executable, "-m", "exchange"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    env.update({"EXCHANGE_LOG_LEVEL": "WARNING", "EXCHANGE_SCHEDULER_ENABLED": "false"})
    env.update(overrides)
    return env


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise AssertionError(f"server exited early with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready within {timeout_s} s")


@contextmanager
def _serving(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port)],
        env=_env(EXCHANGE_DATA_DIR=str(data_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


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
    first_port, second_port = _free_port(), _free_port()
    with _serving(data_dir, first_port) as first:
        assert _wait_ready(first_port, first) < 30
        with _serving(data_dir, second_port) as second:
            _wait_ready(second_port, second)
            first.terminate()
            first.wait(timeout=30)
            # The second server still has its database: the first did not stop it.
            response = httpx.get(f"http://127.0.0.1:{second_port}/ready", timeout=5)
            assert response.status_code == 200
        assert second.returncode == 0 or second.returncode == -15
    assert not _postgres_running(data_dir), "the last server to leave stops PostgreSQL"
    # Data survives a restart.
    assert (data_dir / "pg" / "PG_VERSION").exists()
    with _serving(data_dir, first_port) as again:
        _wait_ready(first_port, again)


def test_unreachable_database_is_a_clear_error_and_non_zero_exit() -> None:
    result = subprocess.run(
        [*EXCHANGE, "serve", "--port", str(_free_port())],
        env=_env(EXCHANGE_DATABASE_URL="postgresql://nobody@127.0.0.1:9/none"),
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
        env=_env(EXCHANGE_POINTS_TTL_DAYS="forever"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "EXCHANGE_POINTS_TTL_DAYS='forever' is not valid" in result.stderr


@pytest.mark.usefixtures("engine")
async def test_tokens_create_list_revoke(database_url: str, engine: AsyncEngine) -> None:
    env = _env(EXCHANGE_DATABASE_URL=database_url)

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
