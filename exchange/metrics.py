"""The Prometheus series, one place (contract §12). Served by `GET /metrics`.

Series (all prefixed `exchange_`):

    http_requests_total{method,route,status}          every response, by route template
    http_request_duration_seconds{method,route}        latency histogram
    postings_total{type}                               committed postings (replays excluded)
    group_commit_batch_size                            requests per group-commit database tx
    db_pool_connections_in_use / db_pool_size          the SQLAlchemy pool (summed over workers)
    signature_failures_total{code}                     refused partner signatures, by code
    settlement_run_duration_seconds                    sweep + close + compute + store

Multiprocess mode: prometheus-client decides at import time, from
`PROMETHEUS_MULTIPROC_DIR`, whether values live in this process's memory or in files
shared by every worker. `exchange serve --workers N` (N > 1) sets it to a fresh folder
under the data folder before the server spawns the workers, and `render()` then merges every
worker's files, so one scrape sees the whole server whichever worker answers it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.db import pool_capacity, watch_pool

__all__ = [
    "CONTENT_TYPE",
    "GROUP_COMMIT_BATCH_SIZE",
    "MULTIPROC_ENV",
    "POOL_IN_USE",
    "POOL_SIZE",
    "POSTINGS",
    "REQUESTS",
    "REQUEST_SECONDS",
    "SETTLEMENT_RUN_SECONDS",
    "SIGNATURE_FAILURES",
    "instrument_engine",
    "observe_batch",
    "observe_request",
    "release_engine",
    "render",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "exchange_http_requests", "HTTP responses by route template and status.",
    ["method", "route", "status"],
)  # fmt: skip
REQUEST_SECONDS = Histogram(
    "exchange_http_request_duration_seconds", "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)  # fmt: skip
POSTINGS = Counter("exchange_postings", "Committed postings by command type.", ["type"])
GROUP_COMMIT_BATCH_SIZE = Histogram(
    "exchange_group_commit_batch_size", "Posting requests per group-commit database transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)  # fmt: skip
POOL_IN_USE = Gauge(
    "exchange_db_pool_connections_in_use", "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)  # fmt: skip
POOL_SIZE = Gauge(
    "exchange_db_pool_size", "Database pool capacity (connections).", multiprocess_mode="livesum"
)
SIGNATURE_FAILURES = Counter(
    "exchange_signature_failures", "Partner requests refused by the signature checks, by code.",
    ["code"],
)  # fmt: skip
SETTLEMENT_RUN_SECONDS = Histogram(
    "exchange_settlement_run_duration_seconds", "Time to run one settlement (sweep to stored run).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)  # fmt: skip

WEBHOOK_BACKLOG = Gauge(
    "exchange_webhook_backlog",
    "Events written to the outbox and not yet delivered (pending or not picked up).",
    multiprocess_mode="livemax",  # every worker sees the same database: one figure
)

# Command class -> the posting type partners see.
_POSTING_TYPES = {
    "Earn": "earn",
    "Burn": "burn",
    "OpenHold": "hold",
    "CaptureHold": "capture",
    "VoidHold": "void",
    "Reverse": "reversal",
}


# (method, route template, status) -> its two series' children: `labels()` checks and
# converts its arguments and takes a lock on every call, which each request would repeat.
_REQUEST_SERIES: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    series = _REQUEST_SERIES.get((method, route, status))
    if series is None:
        series = (
            REQUESTS.labels(method, route, str(status)),
            REQUEST_SECONDS.labels(method, route),
        )
        _REQUEST_SERIES[(method, route, status)] = series
    series[0].inc()
    series[1].observe(seconds)


def observe_batch(committed: Iterable[tuple[object, Any]]) -> None:
    """One group-commit batch: its size, and each new posting by type. `committed` pairs
    each command with its outcome; errors and idempotent replays posted nothing."""
    pairs = list(committed)
    GROUP_COMMIT_BATCH_SIZE.observe(len(pairs))
    for command, outcome in pairs:
        if outcome.error is None and not outcome.replayed:
            name = type(command).__name__
            POSTINGS.labels(_POSTING_TYPES.get(name, name.lower())).inc()


def instrument_engine(engine: AsyncEngine) -> None:
    """Keep the pool gauges current from the pool's own checkout/checkin events."""
    capacity = pool_capacity(engine)
    if capacity is not None:
        POOL_SIZE.inc(capacity)
    watch_pool(engine, checked_out=POOL_IN_USE.inc, checked_in=POOL_IN_USE.dec)


def release_engine(engine: AsyncEngine) -> None:
    """The engine is being disposed: take its capacity off the gauge."""
    capacity = pool_capacity(engine)
    if capacity is not None:
        POOL_SIZE.dec(capacity)


def render() -> bytes:
    """The text exposition of every series, merged over all workers in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
