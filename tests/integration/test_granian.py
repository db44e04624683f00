"""`exchange serve` with several workers under granian (the default) and uvicorn (still
selectable): the same service, down to the metrics, whose values the workers keep in
shared files."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import free_port, serving, wait_ready

WORKERS = 2


def _total(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_a_multi_worker_server_answers_and_its_metrics_add_up(server: str, tmp_path: Path) -> None:
    port = free_port()
    with serving(tmp_path / "data", port, "--server", server, "--workers", str(WORKERS)) as p:
        wait_ready(port, p, timeout_s=60)
        base = f"http://127.0.0.1:{port}"
        for _ in range(20):
            assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        unsigned = httpx.post(f"{base}/v1/earn", json={}, timeout=5)
        assert (unsigned.status_code, unsigned.json()["code"]) == (401, "signature_missing")
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    # Every worker's requests are counted, however the server spread them: a worker forked
    # from the command's process would count in memory the scrape never reads.
    assert _total(metrics, "exchange_http_requests_total", route="/health", status="200") >= 20
    assert _total(metrics, "exchange_db_pool_size") > 0
