"""`exchange serve` with several workers under uvicorn (the default) and granian: the
same service, down to the metrics, whose values the workers keep in
shared files; and workers that end with their command when it is killed outright."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exchange.embedded import EmbeddedPostgres
from tests.servers import EXCHANGE, answers, free_port, server_env, serving, wait_ready

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


@pytest.mark.parametrize(("server", "workers"), [("granian", 1), ("granian", 2), ("uvicorn", 2)])
def test_workers_end_with_their_command_when_it_is_killed(
    server: str, workers: int, postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """SIGKILL (or the OOM killer) takes the command alone. Its workers used to go on
    serving, and posting, on the port, beside the next `exchange serve`; now each stops
    within moments (exchange.workers). An external database, so nothing else is left."""
    database = f"workers_{server}_{workers}"
    postgres.ensure_database(database)
    port = free_port()
    env = server_env(EXCHANGE_DATABASE_URL=postgres.url(database), EXCHANGE_DATA_DIR=str(tmp_path))
    command = [*EXCHANGE, "serve", "--port", str(port), "--server", server]
    process = subprocess.Popen(
        [*command, "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so that the test can clean up whatever is left
    )
    try:
        wait_ready(port, process, timeout_s=60)
        children = psutil.Process(process.pid).children(recursive=True)
        serving_workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(serving_workers) == workers, children
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        _, alive = psutil.wait_procs(serving_workers, timeout=20)
        assert alive == [], f"workers outlived their command: {alive}"
        assert not answers(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
