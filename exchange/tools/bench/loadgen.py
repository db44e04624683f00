"""The load generator: a lean HTTP/1.1 client in a process of its own.

Run as `python -m exchange.tools.bench.loadgen` by the orchestrator.

It must never be what limits throughput, so it does as little as possible per request: C
keep-alive connections (asyncio streams on uvloop when installed), each writing the next
pre-built request's bytes and reading back only the status line, the headers and
Content-Length bytes of body. Only error bodies are decoded (for their problem+json `code`).

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
from typing import Any

__all__ = ["main", "run_load"]

_HEADER_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_CHUNKED = b"transfer-encoding: chunked"
CONNECT_TIMEOUT_S = 10.0
RESPONSE_TIMEOUT_S = 60.0


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


class _ResponseError(Exception):
    """The server's answer could not be read (closed connection, malformed)."""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        head = await reader.readuntil(_HEADER_END)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise _ResponseError("connection closed before a response") from exc
    if not head.startswith(b"HTTP/1.1 "):
        raise _ResponseError(f"not an HTTP/1.1 response: {head[:40]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(_CONTENT_LENGTH)
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(head[at + len(_CONTENT_LENGTH) : end])
        return status, await reader.readexactly(length) if length else b""
    if _CHUNKED in lower:
        return status, await _read_chunked(reader)
    return status, b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _outcome(status: int, body: bytes) -> str:
    """`201`, or `422 insufficient_points`: the status and, for errors, the problem code."""
    if status < 400:
        return str(status)
    try:
        code = json.loads(body).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return f"{status} {code}".rstrip()


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def _client(run: _Run, connect: Connect, stream: Any) -> None:
    reader, writer = stream
    requests, perf = run.requests, time.perf_counter
    while True:
        now = perf()
        if now >= run.deadline:
            break
        if run.next_index >= len(requests):
            run.exhausted_at = run.exhausted_at or now
            break
        request = requests[run.next_index]
        run.next_index += 1
        writer.write(request)
        try:
            status, body = await asyncio.wait_for(_read_response(reader), RESPONSE_TIMEOUT_S)
        except (_ResponseError, OSError, TimeoutError) as exc:
            run.outcomes[f"connection_error {type(exc).__name__}"] += 1
            writer.close()
            try:
                reader, writer = await connect()
            except (OSError, TimeoutError):
                run.outcomes["connection_error reconnect_failed"] += 1
                break
            continue
        latency_us = int((perf() - now) * 1_000_000)
        if status < 300:
            run.ok_latencies_us.append(latency_us)
            run.outcomes[str(status)] += 1
        else:
            run.other_latencies_us.append(latency_us)
            run.outcomes[_outcome(status, body)] += 1
    run.finished.append(perf())
    writer.close()


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
    """

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)

    streams = [await connect() for _ in range(clients)]
    if ready is not None:
        await ready()
    run = _Run(requests)
    run.started = time.perf_counter()
    run.deadline = run.started + seconds
    await asyncio.gather(*(_client(run, connect, stream) for stream in streams))
    # The window ends when the last in-flight request has been answered.
    elapsed = max(run.finished) - run.started
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
