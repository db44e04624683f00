"""The load generator: a lean HTTP/1.1 client in a process of its own.

Run as `python -m exchange.tools.bench.loadgen` by the orchestrator.

It must never be what limits throughput, so it does as little as possible per request: C
keep-alive connections (asyncio protocols on uvloop when installed), each writing the next
pre-built request's bytes from the callback that completes the previous answer, and reading
back only the status line, the headers and Content-Length bytes of body. Only error bodies
are decoded (for their problem+json `code`).

Protocol with the orchestrator, over stdin/stdout, so that its CPU time can be measured over
exactly the timed window: load the requests and open the connections, print `ready`; wait
for a line on stdin; run for `--seconds`; print `done`; then write the results (JSON) to
`--out` and exit. Running out of requests before the time is up is reported
(`exhausted_at_s`), never hidden: the figures then cover less than the intended window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

__all__ = ["main", "run_load"]

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CHUNKED = b"transfer-encoding: chunked"
CONNECT_TIMEOUT_S = 10.0
RESPONSE_TIMEOUT_S = 60.0
WATCH_S = 1.0  # how often answers overdue by RESPONSE_TIMEOUT_S are looked for


@dataclass
class _Run:
    requests: Sequence[bytes]
    deadline: float = 0.0
    started: float = 0.0
    next_index: int = 0
    exhausted_at: float | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    ok_latencies_us: list[int] = field(default_factory=list)
    other_latencies_us: list[int] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)

    def next_request(self, now: float) -> bytes | None:
        """The next request to send at `now`, or None once the time or the requests are up."""
        if now >= self.deadline:
            return None
        if self.next_index >= len(self.requests):
            self.exhausted_at = self.exhausted_at or now
            return None
        request = self.requests[self.next_index]
        self.next_index += 1
        return request

    def answered(self, status: int, body: bytes, latency_us: int) -> None:
        if status < 300:
            self.ok_latencies_us.append(latency_us)
            self.outcomes[str(status)] += 1
        else:
            self.other_latencies_us.append(latency_us)
            self.outcomes[_outcome(status, body)] += 1


class _ResponseError(Exception):
    """The server's answer is not an HTTP/1.1 response (closed and overdue answers are
    noticed by `_Client.connection_lost` and `_Connections.watch`)."""


def _parse_response(buffer: bytes) -> tuple[int, bytes, int] | None:
    """Status, body and length of the first complete response in `buffer`, or None while
    it is incomplete. Raises `_ResponseError` on anything but HTTP/1.1."""
    head_end = buffer.find(_HEADER_END)
    if head_end < 0:
        return None
    if not buffer.startswith(b"HTTP/1.1 "):
        raise _ResponseError(f"not an HTTP/1.1 response: {buffer[:40]!r}")
    status = int(buffer[9:12])
    body_at = head_end + len(_HEADER_END)
    head = buffer[:body_at].lower()
    at = head.find(_CONTENT_LENGTH)
    if at >= 0:
        length = int(head[at + len(_CONTENT_LENGTH) : head.index(b"\r\n", at + 2)])
        if len(buffer) < body_at + length:
            return None
        return status, buffer[body_at : body_at + length], body_at + length
    if _CHUNKED in head:
        return _parse_chunked(buffer, status, body_at)
    return status, b"", body_at


def _parse_chunked(buffer: bytes, status: int, at: int) -> tuple[int, bytes, int] | None:
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buffer[at:line_end].split(b";")[0], 16)
        chunk_at = line_end + 2
        if len(buffer) < chunk_at + size + 2:
            return None
        if size == 0:
            return status, bytes(body), chunk_at + 2
        body += buffer[chunk_at : chunk_at + size]
        at = chunk_at + size + 2


def _outcome(status: int, body: bytes) -> str:
    """`201`, or `422 insufficient_points`: the status and, for errors, the problem code."""
    if status < 400:
        return str(status)
    try:
        code = json.loads(body).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return f"{status} {code}".rstrip()


class _Client(asyncio.Protocol):
    """One keep-alive connection, driven by the event loop's callbacks: it writes the next
    request as soon as the previous answer is complete, with no task, stream or timer per
    request (those cost the generator more than a request costs to send)."""

    def __init__(self, run: _Run, lost: Callable[[_Client, str], None]) -> None:
        self.run = run
        self.lost = lost
        self.transport: asyncio.Transport | None = None
        self.unread = b""  # the start of an answer that has not all arrived
        self.sent_at: float | None = None  # of the request in flight

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def send_next(self) -> None:
        """Write the next request, or close the connection for good when there is none. A
        connection the server closed while idle (before the run started) is replaced."""
        assert self.transport is not None
        now = time.perf_counter()
        if self.transport.is_closing():
            self.lost(self, "connection_error closed")
            return
        request = self.run.next_request(now)
        if request is None:
            self.sent_at = None
            self.transport.close()
            self.lost(self, "")
            return
        self.sent_at = now
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if self.unread:
            data = self.unread + data
        try:
            parsed = _parse_response(data)
        except (_ResponseError, ValueError) as exc:
            self.fail(f"connection_error {type(exc).__name__}")
            return
        if parsed is None or self.sent_at is None:
            self.unread = data
            return
        status, body, used = parsed
        self.unread = data[used:]
        self.run.answered(status, body, int((time.perf_counter() - self.sent_at) * 1_000_000))
        self.send_next()

    def fail(self, outcome: str) -> None:
        """The answer in flight cannot come: count it, drop the connection, tell the owner."""
        if self.sent_at is None:
            return
        self.sent_at = None
        if self.transport is not None:
            self.transport.abort()
        self.lost(self, outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection_error {type(exc).__name__}" if exc else "connection_error closed")

    def overdue(self, now: float) -> bool:
        return self.sent_at is not None and now - self.sent_at > RESPONSE_TIMEOUT_S


class _Connections:
    """The run's connections: each one lost to an error is replaced by a new one, and
    `done` completes when every connection has stopped for good."""

    def __init__(self, run: _Run, host: str, port: int) -> None:
        self.run, self.host, self.port = run, host, port
        self.loop = asyncio.get_running_loop()
        self.running: set[_Client] = set()
        self.reconnecting: set[asyncio.Task[None]] = set()
        self.done: asyncio.Future[None] = self.loop.create_future()

    async def open(self) -> _Client:
        _, client = await asyncio.wait_for(
            self.loop.create_connection(lambda: _Client(self.run, self.lost), self.host, self.port),
            CONNECT_TIMEOUT_S,
        )
        return client

    def start(self, clients: Sequence[_Client]) -> None:
        """Send each client's first request (all counted as running before any can stop)."""
        self.running.update(clients)
        for client in clients:
            client.send_next()

    def lost(self, client: _Client, outcome: str) -> None:
        """`client` stopped: for good (no `outcome`), or on an error, counted as `outcome`."""
        self.running.discard(client)
        if outcome:
            self.run.outcomes[outcome] += 1
            task = self.loop.create_task(self._reconnect())
            self.reconnecting.add(task)
            task.add_done_callback(self._reconnected)
        else:
            self.run.finished.append(time.perf_counter())
        self._stop_if_done()

    async def _reconnect(self) -> None:
        try:
            client = await self.open()
        except (OSError, TimeoutError):
            self.run.outcomes["connection_error reconnect_failed"] += 1
            self.run.finished.append(time.perf_counter())
            return
        self.start([client])

    def _reconnected(self, task: asyncio.Task[None]) -> None:
        self.reconnecting.discard(task)
        self._stop_if_done()

    def _stop_if_done(self) -> None:
        if not self.running and not self.reconnecting and not self.done.done():
            self.done.set_result(None)

    def watch(self) -> None:
        """Every WATCH_S: fail the connections whose answer is overdue."""
        now = time.perf_counter()
        for client in [client for client in self.running if client.overdue(now)]:
            client.fail("connection_error TimeoutError")
        if not self.done.done():
            self.loop.call_later(WATCH_S, self.watch)


async def run_load(
    requests: Sequence[bytes],
    *,
    host: str,
    port: int,
    clients: int,
    seconds: float,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Send `requests` over `clients` keep-alive connections for `seconds`; the results.

    `ready` (if given) is awaited once every connection is open, before the clock starts.
    A connection whose answer fails (closed, malformed, or not complete within
    RESPONSE_TIMEOUT_S) counts a `connection_error` and is replaced by a new one.
    """
    run = _Run(requests)
    connections = _Connections(run, host, port)
    opened = [await connections.open() for _ in range(clients)]
    if ready is not None:
        await ready()
    run.started = time.perf_counter()
    run.deadline = run.started + seconds
    connections.start(opened)
    connections.watch()
    await connections.done
    # The window ends when the last in-flight request has been answered.
    elapsed = max(run.finished, default=time.perf_counter()) - run.started
    return {
        "elapsed_s": elapsed,
        "requests_available": len(requests),
        "sent": run.next_index,
        "exhausted_at_s": None if run.exhausted_at is None else run.exhausted_at - run.started,
        "outcomes": dict(run.outcomes),
        "ok_latencies_us": run.ok_latencies_us,
        "other_latencies_us": run.other_latencies_us,
    }


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m exchange.tools.bench.loadgen")
    parser.add_argument("--requests", type=Path, required=True, help="length-prefixed records")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from exchange.tools.bench.presign import read_records  # noqa: PLC0415 - light, but keep -m fast

    args = _parse(argv)
    requests = read_records(args.requests)

    async def ready() -> None:
        print("ready", flush=True)  # the protocol with the orchestrator
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    async def work() -> dict[str, Any]:
        result = await run_load(
            requests,
            host=args.host,
            port=args.port,
            clients=args.clients,
            seconds=args.seconds,
            ready=ready,
        )
        print("done", flush=True)
        return result

    result = _event_loop_runner()(work())
    args.out.write_text(json.dumps(result))
    return 0


def _event_loop_runner() -> Callable[[Any], dict[str, Any]]:
    try:
        import uvloop  # noqa: PLC0415 - optional: uvicorn[standard] brings it
    except ImportError:  # pragma: no cover - plain asyncio works, a little slower
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    raise SystemExit(main())
