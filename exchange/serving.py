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

`listener_per_worker` gives each worker process a listening socket of its own on the
port (`SO_REUSEPORT`), so that the kernel spreads new connections over the workers. With
one socket shared by every worker, the worker whose event loop wakes first accepts every
connection waiting, and a client that opens its keep-alive connections together (a
partner's pool, a load balancer, the bench) could land them all on one worker: one core
saturated, the other idle (docs/performance.md, "Twentieth round").
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "listener_per_worker"]

# Linux hashes each new connection to one of the listening sockets sharing a port; other
# systems (macOS, the BSDs) allow the option without spreading connections evenly.
_SPREADS_CONNECTIONS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


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


def listener_per_worker(config: uvicorn.Config) -> socket.socket:
    """The socket to hand uvicorn's worker supervisor: each worker process that receives
    it (a spawned worker unpickles it, a replacement too) listens on a socket of its own,
    bound to the same address with `SO_REUSEPORT`, and the kernel spreads new connections
    over them by a hash of each connection's addresses.

    The port is first bound as uvicorn binds it, without `SO_REUSEPORT`, so a port another
    server listens on still stops this one at start (uvicorn exits), instead of the two
    sharing it. Off Linux, that socket itself is shared by the workers, as uvicorn does."""
    shared = config.bind_socket()
    if not _SPREADS_CONNECTIONS:
        return shared
    family, address = shared.family, shared.getsockname()
    shared.close()
    return _PerWorkerSocket(family, address)


def _bound(family: int, address: Any, sock: socket.socket | None = None) -> socket.socket:
    sock = sock or socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class _PerWorkerSocket(socket.socket):
    """Bound, never listening, in the supervisor (it holds the port between workers);
    pickled to a worker, it becomes that worker's own bound socket, which uvicorn's
    server then listens on. Only listening sockets receive connections."""

    def __init__(self, family: int, address: Any) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        _bound(family, address, self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_bound, (self.family, self.getsockname()))
