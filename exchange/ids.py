r"""Ids: the generator of internal UUIDs, and the external ids partners see (opaque
strings with a type prefix over those UUIDs).

The generator reads the clock and entropy, so it lives here and not in the pure ledger
core: the service hands `new_id` to the rules as `Context.ids`.

Every id that arrives in a path, a query or a body is checked against the exact shape
the exchange mints (`*_SHAPE`, used with `fullmatch`, and the `\A...\Z` patterns of the
wire structs), so a NUL byte, a control character or a 10 KB string never reaches
PostgreSQL: it is a 404 (a path naming nothing that can exist) or a 422 (a field).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from array import array

from exchange.ledger import IdFactory

__all__ = [
    "KEY_ID_SHAPE",
    "MEMBER_ID_PATTERN",
    "MEMBER_ID_SHAPE",
    "PARTNER_ID_SHAPE",
    "RUN_ID_SHAPE",
    "format_hold_id",
    "format_transaction_id",
    "new_adjustment_id",
    "new_id",
    "new_member_id",
    "parse_hold_id",
    "parse_transaction_id",
]

_HEX32 = re.compile(r"[0-9a-f]{32}")
# new_member_id(): "mem_" and a UUID's 32 hex digits.
MEMBER_ID_PATTERN = r"\Amem_[0-9a-f]{32}\Z"
MEMBER_ID_SHAPE = re.compile(MEMBER_ID_PATTERN)
# Partner ids are slugs chosen by the operator (partners.registry validates new ones).
PARTNER_ID_SHAPE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# partners.registry.add_key: "key_" and 12 random bytes in hex.
KEY_ID_SHAPE = re.compile(r"key_[0-9a-f]{24}")
# settlement.service.run_id_for: "stl_" and the period end, to the microsecond.
RUN_ID_SHAPE = re.compile(r"stl_[0-9]{8}T[0-9]{6}(?:\.[0-9]{6})?Z")


class _MonotonicUUID7:
    """UUIDv7 (RFC 9562) with a counter in `rand_a`: 48-bit millisecond time, then 12 bits
    that count up within a millisecond, then random bits. Ids therefore sort by creation
    time and, within one process, strictly increase, so two lots created in the same
    batch tie-break ("oldest first") in the order the requests were applied.

    The random bits come from `os.urandom`, read `_POOL_WORDS` 64-bit words at a time: a
    system call per id was two fifths of the generator's cost (1.27 us an id against 0.75),
    and a posting takes two ids (docs/performance.md, "Twenty-sixth round"). A child
    process forgets the words its parent read (`os.register_at_fork`), so a worker forked
    from a process that made ids never repeats the words its parent goes on to use. Not
    thread-safe, like the counter: ids are made on the event loop."""

    _POOL_WORDS = 512

    def __init__(self) -> None:
        self._millis = 0
        self._counter = 0
        self._pool = array("Q")
        self._next = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._next = array("Q"), 0

    def _random(self) -> int:
        """64 random bits, never handed out twice."""
        at = self._next
        if at >= len(self._pool):
            self._pool, at = array("Q", os.urandom(8 * self._POOL_WORDS)), 0
        self._next = at + 1
        return self._pool[at]

    def __call__(self) -> uuid.UUID:
        millis = time.time_ns() // 1_000_000
        if millis > self._millis:
            self._millis, self._counter = millis, self._random() & 0x1FF
        else:  # same (or an earlier) millisecond: keep counting from the last one
            self._counter += 1
            if self._counter > 0xFFF:
                self._millis, self._counter = self._millis + 1, 0
        value = (self._millis & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76  # version 7
        value |= self._counter << 64
        value |= 0x2 << 62  # RFC 9562 variant
        value |= self._random() & ((1 << 62) - 1)
        return uuid.UUID(int=value)


new_id: IdFactory = _MonotonicUUID7()


def _format(prefix: str, value: uuid.UUID) -> str:
    return f"{prefix}{value.hex}"


def _parse(prefix: str, text: str) -> uuid.UUID | None:
    if not text.startswith(prefix):
        return None
    body = text[len(prefix) :]
    return uuid.UUID(hex=body) if _HEX32.fullmatch(body) else None


def format_transaction_id(value: uuid.UUID) -> str:
    return _format("txn_", value)


def parse_transaction_id(text: str) -> uuid.UUID | None:
    return _parse("txn_", text)


def format_hold_id(value: uuid.UUID) -> str:
    return _format("hold_", value)


def parse_hold_id(text: str) -> uuid.UUID | None:
    return _parse("hold_", text)


def new_member_id() -> str:
    return _format("mem_", new_id())


def new_adjustment_id() -> str:
    return _format("adj_", new_id())
