"""Driver errors stop at the store: retryable conflicts, broken invariants, the rest."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError

from exchange.errors import InvariantViolation, Unprocessable

__all__ = ["RetryableConflict", "translate_errors"]

_RETRYABLE = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


class RetryableConflict(Exception):
    """A transient conflict (a deadlock, a concurrent first use of an idempotency key):
    the whole database transaction may be retried."""


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (
        exc,
        getattr(exc, "orig", None),
        getattr(getattr(exc, "orig", None), "__cause__", None),
    ):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


@contextmanager
def translate_errors() -> Iterator[None]:
    """Map driver errors (asyncpg's or SQLAlchemy's) to retryable conflicts, refused data
    (SQLSTATE class 22, 422) and broken invariants; anything else (connection trouble)
    passes through to the 503 mapping."""
    try:
        yield
    except (DBAPIError, asyncpg.PostgresError) as exc:
        state = _sqlstate(exc)
        if state in _RETRYABLE:
            raise RetryableConflict(state) from exc
        if state == "23505" and "idempotency_keys" in str(exc):
            raise RetryableConflict(state) from exc
        if state is not None and state.startswith("22"):
            # A data exception (a NUL byte, a value out of range): the request carried a
            # value PostgreSQL cannot hold. The edges check formats first; this is the net.
            raise Unprocessable(
                "A value in the request cannot be stored (bad characters or out of range)."
            ) from exc
        if state is not None and (state.startswith("23") or state == "P0001"):
            raise InvariantViolation(f"database refused a write ({state}): {exc}") from exc
        raise
