"""uvicorn's HTTP protocol, sending each response's head and body in one write.

uvicorn writes the status line and headers as soon as the application sends
`http.response.start`, and the body in a second write when `http.response.body` follows.
Every API response is small and whole (one body message), so that is two system calls
and, on the receiving side, two wake-ups per response; on the bench machine the second
write was 5% of a balance read's server CPU (docs/performance.md).

`CoalescingHttpToolsProtocol` holds a response's head until the next write on the same
connection (the body, moments later in the same step of the same task) and sends both
in one `writelines`. Anything not followed by another write in that step (a streamed
response, an upgrade, an error page then a close) is sent by a callback at the loop's
next turn, or at once by `close()`, so nothing is held longer than one turn of the
event loop and bytes keep their order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol"]


class _CoalescingTransport:
    """A transport whose `write` holds the first piece and sends it with the next one."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            held, self._held = self._held, None
            self._transport.writelines((held, data))

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Everything else (is_closing, pause_reading, get_extra_info, set_protocol...)
        # is the real transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with one write per response (see the module)."""

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        # Flow control and the addresses keep the real transport; the request cycles,
        # which write the responses, get the coalescing one.
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
