"""Who may read `/metrics` without a token, against a real `exchange serve` under each
server: the app's rule (exchange.client_address, EXCHANGE_TRUSTED_PROXIES) and nothing
of the server's. The test client is on 127.0.0.1, so it stands for a local agent or, with
X-Forwarded-For, for a reverse proxy on the same host relaying someone else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.servers import EXCHANGE, free_port, server_env, serving, wait_ready

SERVERS = ["granian", "uvicorn"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PostgreSQL for the module's servers, one at a time: initdb once, not per server."""
    return tmp_path_factory.mktemp("proxies") / "data"


def _scrape(port: int, forwarded: str | None = None) -> int:
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    url = f"http://127.0.0.1:{port}/metrics"
    return httpx.get(url, headers=headers, timeout=10).status_code


@pytest.mark.parametrize("server", SERVERS)
def test_a_remote_client_relayed_by_a_local_proxy_needs_a_token(
    server: str, data_dir: Path
) -> None:
    port = free_port()
    with serving(data_dir, port, "--server", server) as process:
        wait_ready(port, process, timeout_s=60)
        assert _scrape(port) == 200  # a local agent
        assert _scrape(port, "203.0.113.9") == 401  # a remote client, through the proxy
        assert _scrape(port, "127.0.0.1, 203.0.113.9") == 401  # its own claim, on the left
        assert _scrape(port, "127.0.0.1") == 200  # a local agent, through the proxy


@pytest.mark.parametrize("server", SERVERS)
def test_with_no_trusted_proxy_x_forwarded_for_is_ignored(server: str, data_dir: Path) -> None:
    # The peer, 127.0.0.1, is the client whatever the header says. Under uvicorn this also
    # proves `exchange serve` turned uvicorn's proxy_headers off: with them on, uvicorn
    # would rewrite the client to 203.0.113.9 (it trusts 127.0.0.1 by default) and the
    # scrape would be refused.
    port = free_port()
    env = {"EXCHANGE_TRUSTED_PROXIES": "none"}
    with serving(data_dir, port, "--server", server, env=env) as process:
        wait_ready(port, process, timeout_s=60)
        assert _scrape(port, "203.0.113.9") == 200


def test_a_bad_trusted_proxy_stops_start_up_naming_the_variable() -> None:
    result = subprocess.run(
        [*EXCHANGE, "serve", "--port", str(free_port())],
        env=server_env(EXCHANGE_TRUSTED_PROXIES="127.0.0.1,proxy.internal"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "EXCHANGE_TRUSTED_PROXIES='127.0.0.1,proxy.internal' is not valid" in result.stderr
