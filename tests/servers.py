"""Running `exchange serve` as a real process in a test: a free port, a clean environment,
waiting until it answers `/ready`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

EXCHANGE = [sys.executable, "-m", "exchange"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXCHANGE_")}
    env.update({"EXCHANGE_LOG_LEVEL": "WARNING", "EXCHANGE_SCHEDULER_ENABLED": "false"})
    env.update(overrides)
    return env


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> float:
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


def answers(port: int) -> bool:
    """Whether anything answers HTTP on the port (a server, or what is left of one)."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    except httpx.TransportError:
        return False
    return True


@contextmanager
def serving(
    data_dir: Path, port: int, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`exchange serve --port <port> <options>`; `env` adds settings to the clean environment."""
    process = subprocess.Popen(
        [*EXCHANGE, "serve", "--port", str(port), *options],
        env=server_env(EXCHANGE_DATA_DIR=str(data_dir), **(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
