"""The bench's load generator against a real TCP server that answers as scripted: what it
counts must be what the server answered, however the answer arrives or fails to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from exchange.tools.bench import loadgen

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a coroutine on asyncio's loop, or on uvloop's (the bench's generator runs there)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


_PROBLEM = b'{"type":"about:blank","code":"insufficient_points"}'


def _answer(status: int, body: bytes, *, chunked: bool = False) -> bytes:
    reason = b"OK" if status < 400 else b"Unprocessable Content"
    if chunked:
        parts = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:3], body[3:]))
        return b"HTTP/1.1 %d %s\r\ntransfer-encoding: chunked\r\n\r\n%s0\r\n\r\n" % (
            status,
            reason,
            parts,
        )
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (status, reason, len(body)) + body


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers by the request's path: /ok, /problem, /chunked, /slow (in three pieces),
    /close (no answer, the connection closed), /garbage (not HTTP), /stall (no answer)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            if path == b"/close":
                writer.close()
                return
            if path == b"/stall":  # until the client gives up and closes
                await reader.read()
                writer.close()
                return
            if path == b"/garbage":
                writer.write(b"SMTP ready\r\n\r\n")
            elif path == b"/problem":
                writer.write(_answer(422, _PROBLEM))
            elif path == b"/chunked":
                writer.write(_answer(200, b'{"chunked":true}', chunked=True))
            elif path == b"/slow":
                answer = _answer(201, b'{"posting":"slow"}')
                for piece in (answer[:10], answer[10:50], answer[50:]):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            else:
                writer.write(_answer(200, b'{"ok":true}'))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode()


async def _load(paths: list[str], *, clients: int, seconds: float) -> dict[str, Any]:
    """The generator's results over `paths`, against a fresh scripted server."""
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        requests = [_get(path) for path in paths]
        result = await loadgen.run_load(
            requests, host="127.0.0.1", port=port, clients=clients, seconds=seconds
        )
        await asyncio.sleep(0.05)  # the handlers see their clients gone, and close
    return result


def test_counts_every_answer_by_status_and_problem_code(run: Runner) -> None:
    paths = ["/ok", "/problem", "/chunked", "/slow"] * 25
    result = run(_load(paths, clients=4, seconds=30))
    assert result["outcomes"] == {"200": 50, "201": 25, "422 insufficient_points": 25}
    assert result["sent"] == 100
    assert len(result["ok_latencies_us"]) == 75
    assert len(result["other_latencies_us"]) == 25
    # The slow answers took their three pieces' pauses; the window ends with the last answer.
    assert max(result["ok_latencies_us"]) >= 20_000
    # The requests ran out long before the 30 s: said so, and the window is not 30 s.
    assert result["exhausted_at_s"] is not None
    assert result["elapsed_s"] < 10


def test_a_lost_answer_is_counted_and_the_connection_replaced(run: Runner) -> None:
    paths = ["/ok", "/close", "/ok", "/garbage"] + ["/ok"] * 20
    result = run(_load(paths, clients=1, seconds=30))
    assert result["outcomes"] == {
        "200": 22,
        "connection_error closed": 1,
        "connection_error _ResponseError": 1,
    }
    assert result["sent"] == 24
    assert len(result["ok_latencies_us"]) == 22


def test_stops_at_the_deadline_with_requests_left(run: Runner) -> None:
    result = run(_load(["/slow"] * 10_000, clients=2, seconds=0.3))
    assert result["exhausted_at_s"] is None
    answered = sum(result["outcomes"].values())
    assert 0 < answered < 200
    assert result["sent"] == answered  # every request sent was answered before the end
    assert 0.3 <= result["elapsed_s"] < 2


def test_an_overdue_answer_times_out(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "RESPONSE_TIMEOUT_S", 0.1)
    monkeypatch.setattr(loadgen, "WATCH_S", 0.05)
    result = run(_load(["/stall", "/ok"], clients=1, seconds=30))
    assert result["outcomes"] == {"connection_error TimeoutError": 1, "200": 1}


async def _load_after_idle_closes(paths: list[str], *, closed: int) -> dict[str, Any]:
    """As `_load`, with a server that closes the first `closed` connections while they
    wait for the run to start, as a server's keep-alive timeout would."""
    accepted = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        if accepted <= closed:
            writer.close()
            return
        await _serve(reader, writer)

    async def ready() -> None:
        await asyncio.sleep(0.1)  # the closes arrive before the first request

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        requests = [_get(path) for path in paths]
        result = await loadgen.run_load(
            requests, host="127.0.0.1", port=port, clients=3, seconds=30, ready=ready
        )
        await asyncio.sleep(0.05)
    return result


def test_a_connection_closed_before_the_run_is_replaced(run: Runner) -> None:
    result = run(_load_after_idle_closes(["/ok"] * 30, closed=2))
    assert result["outcomes"] == {"200": 30, "connection_error closed": 2}
    assert result["sent"] == 30
