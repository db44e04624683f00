"""The README's partner quickstart runs as written against a real `exchange serve`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from partners.signing import generate_keypair
from tests.servers import EXCHANGE, free_port, server_env, serving, wait_ready

README = Path(__file__).resolve().parents[2] / "README.md"


def _quickstart() -> str:
    text = README.read_text()
    start = text.index("## Partner quickstart")
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, "the README has a Python quickstart"
    return match.group(1)


def test_the_partner_quickstart_runs_against_a_real_server(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    base_url = f"http://127.0.0.1:{port}"
    with serving(data_dir, port) as server:
        wait_ready(port, server)
        env = server_env(EXCHANGE_DATA_DIR=str(data_dir))
        token = subprocess.run(
            [*EXCHANGE, "tokens", "create", "--role", "admin"], env=env, capture_output=True,
            text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
        admin = {"Authorization": f"Bearer {token}"}
        partner = {"partner_id": "grocer", "name": "Grocer", "settlement_currency": "EUR",
                   "issue_price": "0.012", "redemption_value": "0.010",
                   "earn_rates": {"EUR": "1"}}  # fmt: skip
        assert httpx.post(f"{base_url}/v1/admin/partners", json=partner, headers=admin).is_success
        private_key, public_key = generate_keypair()
        key = httpx.post(
            f"{base_url}/v1/admin/partners/grocer/keys", json={"public_key": public_key},
            headers=admin,
        ).json()  # fmt: skip
        code = (
            _quickstart()
            .replace("https://api.coalition.example", base_url)
            .replace('"key_..."', repr(key["key_id"]))
            .replace('"<base64url Ed25519 private key>"', repr(private_key))
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
            cwd=README.parent,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "120 {'available': 120, 'held': 0, 'pending': 0}"
    assert "'available': 90" in lines[1]
