"""A real `exchange serve --workers 2` with data made through the real API, and a real
headless Chromium (Debian's `chromium` package) driven by Playwright.

The browser tests skip, saying why, only when /usr/bin/chromium is missing; `.ci/run`
installs it. Playwright's own browser download is never used (`playwright install` is not
needed): it launches the system Chromium.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from partners.client import PartnerClient
from partners.signing import generate_keypair
from tests.servers import EXCHANGE, free_port, server_env, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
WORKERS = 2
POOL_SIZE = 4
BATCH_PROCESSORS = 2  # each adds two connections to its worker's pool
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Exchange:
    base_url: str
    admin_token: str
    finance_token: str
    run_id: str
    process: subprocess.Popen[bytes]

    def api(self, path: str, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token or self.finance_token}"}
        response = httpx.get(self.base_url + path, headers=headers, timeout=10)
        response.raise_for_status()
        return response.json()


def _token(env: dict[str, str], role: str, name: str) -> str:
    return subprocess.run(
        [*EXCHANGE, "tokens", "create", "--role", role, "--name", name], env=env,
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip


def _partner(base_url: str, admin: dict[str, str], partner_id: str) -> PartnerClient:
    body = {"partner_id": partner_id, "name": partner_id.title(), "settlement_currency": "EUR",
            "issue_price": "0.012", "redemption_value": "0.010"}  # fmt: skip
    httpx.post(f"{base_url}/v1/admin/partners", json=body, headers=admin).raise_for_status()
    private_key, public_key = generate_keypair()
    key = httpx.post(
        f"{base_url}/v1/admin/partners/{partner_id}/keys", json={"public_key": public_key},
        headers=admin,
    )  # fmt: skip
    key.raise_for_status()
    return PartnerClient(base_url, key.json()["key_id"], private_key)


def _make_data(base_url: str, admin_token: str) -> str:
    """domain.md's worked example through the signed API, settled; one earn after."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    grocer, fuel, cinema = (
        _partner(base_url, admin, name) for name in ("grocer", "fuel", "cinema")
    )
    shopper = grocer.enrol_member()["member_id"]
    driver = fuel.enrol_member()["member_id"]
    grocer.earn(shopper, 1_000_000, reference="basket-1")
    fuel.earn(driver, 400_000, reference="tank-1")
    grocer.burn(shopper, 300_000, reference="basket-2")
    cinema.burn(shopper, 500_000, reference="tickets")  # the grocer's points
    fuel.burn(driver, 200_000, reference="tank-2")
    time.sleep(1.1)  # period_end on a whole second, after every posting above
    period_end = datetime.now(UTC).replace(microsecond=0)
    run = httpx.post(
        f"{base_url}/v1/admin/settlements", json={"period_end": period_end.isoformat()},
        headers=admin, timeout=60,
    )  # fmt: skip
    assert run.status_code == 201, run.text
    grocer.earn(shopper, 7_000, reference="after-close")
    for client in (grocer, fuel, cinema):
        client.close()
    run_id: str = run.json()["run_id"]
    return run_id


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    data_dir, port = tmp_path_factory.mktemp("console") / "data", free_port()
    env = server_env(
        EXCHANGE_DATA_DIR=str(data_dir),
        EXCHANGE_DB_POOL_SIZE=str(POOL_SIZE),
        EXCHANGE_BATCH_PROCESSORS=str(BATCH_PROCESSORS),
    )
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port), "--workers", str(WORKERS)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(port, process, timeout_s=60)
        base_url = f"http://127.0.0.1:{port}"
        admin_token = _token(env, "admin", "ada")
        finance_token = _token(env, "finance", "finn")
        run_id = _make_data(base_url, admin_token)
        yield Exchange(base_url, admin_token, finance_token, run_id, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only with a browser

    # Under .ci/any-date the test process carries libfaketime in LD_PRELOAD; the browser and
    # Playwright's driver have no use for a moved clock, so they start without it.
    saved = {name: os.environ.pop(name) for name in ("LD_PRELOAD",) if name in os.environ}
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            yield chromium
            chromium.close()
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/screenshots when EXCHANGE_UPDATE_SCREENSHOTS=1 (to refresh the committed ones),
    else a temporary folder: the tests take them either way."""
    if os.environ.get("EXCHANGE_UPDATE_SCREENSHOTS") == "1":
        return REPO / "docs" / "screenshots"
    return tmp_path_factory.mktemp("screenshots")


def save_screenshot(page: Any, path: Path) -> None:
    """The viewport as a 256-colour PNG: the console's flat colours survive, and the files
    committed under docs/ stay a third of their size."""
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
