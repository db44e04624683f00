"""uvicorn with each response in one write (exchange.serving): the same bytes on the wire,
one system call per whole response, nothing held past a turn of the event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

from exchange.serving import CoalescingHttpToolsProtocol


class _Recorder:
    """The real transport as the coalescing one sees it: what was written, and how."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append([bytes(data)])

    def writelines(self, pieces: Any) -> None:
        self.calls.append([bytes(piece) for piece in pieces])

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    body = f"you asked for {scope['path']}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_a_whole_response_is_one_write_and_a_lone_head_is_sent_next_turn() -> None:
    from exchange.serving import _CoalescingTransport  # noqa: PLC0415 - the unit under test

    recorder = _Recorder()
    transport = _CoalescingTransport(recorder, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert recorder.calls == [[b"HTTP/1.1 200 OK\r\n\r\n", b"body"]]
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert len(recorder.calls) == 1, "held until the body or the loop's next turn"
    await asyncio.sleep(0)
    assert recorder.calls[-1] == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()  # an error page then a close: sent before the close
    assert recorder.calls[-1] == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert recorder.closed


async def test_responses_over_a_real_socket_are_whole_and_in_order() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol, log_config=None
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # uvicorn's Server says it started with a flag only
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            # Several responses on one kept-alive connection, then a streamed one.
            for n in range(5):
                got = await http.get(f"/item/{n}")
                assert (got.status_code, got.text) == (200, f"you asked for /item/{n}")
            streamed = await http.get("/stream")
            assert streamed.text == "one two three"
            head = await http.head("/item/9")
            assert head.status_code == 200
            assert head.headers["content-length"] == str(len("you asked for /item/9"))
        # A request uvicorn cannot parse gets its 400 before the connection closes.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
