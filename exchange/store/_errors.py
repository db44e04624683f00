"""Driver errors stop at the store: retryable conflicts, broken invariants, an unreachable
database, the rest.

    RetryableConflict      a deadlock or serialization failure: retry the database tx
    InvariantViolation     PostgreSQL refused a write our checks should have refused (500)
    DatabaseUnavailable    the database cannot serve us right now (503 + Retry-After):
                           unreachable, restarting, our connection killed, read-only,
                           disk full or out of memory
    ServiceUnavailable     the database is there but did not finish this statement (503):
                           a row held past the lock timeout, a statement cancelled

`is_unavailable` is the one classification of "the database is away" (used here, by the
pool plumbing in `exchange.db`, and as the last net in `exchange.problems`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from exchange.errors import (
    DatabaseUnavailable,
    ExchangeError,
    InvariantViolation,
    ServiceUnavailable,
    Unprocessable,
)

__all__ = [
    "RetryableConflict",
    "is_connection_lost",
    "is_unavailable",
    "translate_errors",
    "unavailable_as_503",
]

_RETRYABLE = {"40001", "40P01"}  # serialization failure, deadlock
# lock_timeout expired (the exchange takes no NOWAIT locks): another session has held a row
# this statement needs for seconds. Retrying at once would wait as long again: 503.
_LOCK_TIMEOUT = "55P03"
_LOCKED = (
    "A record this request needs is held by another database session; retry shortly "
    "(with the same Idempotency-Key)."
)
# query_canceled: a statement_timeout (set on the role or the database by an operator) or
# an operator's pg_cancel_backend. The connection is fine and nothing was written: 503.
_CANCELED = "57014"
_CANCELED_DETAIL = (
    "A database statement of this request was cancelled (a statement timeout or an "
    "operator); retry shortly (with the same Idempotency-Key)."
)
# Connection exceptions (08), insufficient resources (53: disk full, out of memory, too many
# connections), operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03
# cannot connect now, 57P04 database dropped), system I/O error (58030).
_UNAVAILABLE_PREFIXES = ("08", "53", "57P", "58030")
_READ_ONLY = "25006"  # read_only_sql_transaction: a standby, or default_transaction_read_only
# Failures that leave the connection itself unusable (as opposed to a refused statement).
_LOST = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError & co.
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress"
    asyncpg.exceptions.InternalClientError,  # "cannot switch to state ..." after a cut
    DisconnectionError,
    OSError,
    TimeoutError,
)
_CHAIN_DEPTH_MAX = 8
_BAD_VALUE = "A value in the request cannot be stored (bad characters or out of range)."


class RetryableConflict(Exception):
    """A transient conflict (a deadlock, a concurrent first use of an idempotency key):
    the whole database transaction may be retried."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (`.orig`), and its causes, a bounded walk."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _CHAIN_DEPTH_MAX:
        current = todo.pop(0)  # breadth first: the wrapped driver error before causes
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                todo.append(linked)


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in _causes(exc):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def _is_bad_argument(exc: BaseException) -> bool:
    """asyncpg refused to encode a query argument (a date PostgreSQL cannot hold, ...)
    before sending anything: the request's value, not the connection. (Its client-side
    `DataError` is both an InterfaceError and a ValueError; it is not exported.)"""
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)


def is_connection_lost(exc: BaseException) -> bool:
    """The connection this failed on cannot be used again: discard it, never reuse it."""
    for candidate in _causes(exc):
        if isinstance(candidate, _LOST) and not _is_bad_argument(candidate):
            return True
        if isinstance(candidate, DBAPIError) and candidate.connection_invalidated:
            return True
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str) and state.startswith(("08", "57P")):
            return True
    return False


def _refuses_connections(exc: BaseException) -> bool:
    """`ALTER DATABASE ... ALLOW_CONNECTIONS false` (or a database being dropped): 55000 at
    connect time. The same SQLSTATE on a statement is the caller's bug, not an outage."""
    return isinstance(
        exc, asyncpg.exceptions.ObjectNotInPrerequisiteStateError
    ) and "not currently accepting connections" in str(exc)


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot serve us now, for a reason that is not the request's fault and
    should pass: answer 503 and let the client retry (with the same Idempotency-Key)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if any(isinstance(candidate, PoolTimeout) for candidate in _causes(exc)):
        return True
    if is_connection_lost(exc):
        return True
    if any(_refuses_connections(candidate) for candidate in _causes(exc)):
        return True
    state = _sqlstate(exc)
    return state is not None and (
        state.startswith(_UNAVAILABLE_PREFIXES) or state in (_READ_ONLY, _LOCK_TIMEOUT, _CANCELED)
    )


def _unavailable(exc: BaseException) -> DatabaseUnavailable:
    state = _sqlstate(exc)
    reason = f"{type(exc).__name__}" + (f" ({state})" if state else "")
    return DatabaseUnavailable(
        "The database is unreachable or not accepting writes; retry shortly "
        "(with the same Idempotency-Key).",
        reason=reason,
    )


@contextmanager
def unavailable_as_503() -> Iterator[None]:
    """Turn "the database is away" (however the driver or the pool says it) into the one
    typed `DatabaseUnavailable`; every other error passes unchanged."""
    try:
        yield
    except (ExchangeError, RetryableConflict):
        raise  # typed already (DatabaseUnavailable included): never re-read its causes
    except Exception as exc:
        if is_unavailable(exc):
            raise _unavailable(exc) from exc
        raise


@contextmanager
def translate_errors() -> Iterator[None]:
    """Map driver errors (asyncpg's or SQLAlchemy's) to retryable conflicts, refused data
    (SQLSTATE class 22, 422), broken invariants, and an unavailable database (503);
    anything else passes through."""
    try:
        yield
    except (DBAPIError, asyncpg.PostgresError) as exc:
        state = _sqlstate(exc)
        if state in _RETRYABLE:
            raise RetryableConflict(state) from exc
        if state in (_LOCK_TIMEOUT, _CANCELED):
            # Not DatabaseUnavailable: the database is there, and a group-commit batch that
            # waited for one member's row is split so its other requests still post.
            raise ServiceUnavailable(
                _LOCKED if state == _LOCK_TIMEOUT else _CANCELED_DETAIL
            ) from exc
        if state == "23505" and "idempotency" in str(exc):
            # A key stored by a transaction that committed after this one's claim read
            # (the postings' unique index, a records table's key, or the trigger keeping
            # a key in one place): the retry replays it.
            raise RetryableConflict(state) from exc
        if state is not None and state.startswith("22"):
            # A data exception (a NUL byte, a value out of range): the request carried a
            # value PostgreSQL cannot hold. The edges check formats first; this is the net.
            raise Unprocessable(_BAD_VALUE) from exc
        if state is not None and (state.startswith("23") or state == "P0001"):
            raise InvariantViolation(f"database refused a write ({state}): {exc}") from exc
        if is_unavailable(exc):
            raise _unavailable(exc) from exc
        raise
    except asyncpg.InterfaceError as exc:
        if _is_bad_argument(exc):
            raise Unprocessable(_BAD_VALUE) from exc
        raise _unavailable(exc) from exc
    except (asyncpg.exceptions.InternalClientError, OSError) as exc:
        raise _unavailable(exc) from exc
