"""One classification of "the database is away", and its one mapping to HTTP (503 +
Retry-After): every driver error that means an outage, and none that means a bug or a
refused write. Disk full (class 53) is mapped here because filling a disk in a test is
not cheap; the fault drills in tests/faults exercise the same path for real outages."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from litestar import Litestar, get
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from exchange.errors import DatabaseUnavailable, InvariantViolation
from exchange.problems import exception_handlers
from exchange.store import RetryableConflict, is_unavailable, translate_errors
from settlement.schedule import BACKOFF_S_MAX, tick_delay_s

exc = asyncpg.exceptions

OUTAGES = [
    exc.DiskFullError("could not extend file: No space left on device"),  # 53100
    exc.OutOfMemoryError("out of memory"),  # 53200
    exc.TooManyConnectionsError("too many clients already"),  # 53300
    exc.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
    exc.CrashShutdownError("terminating connection because of crash"),  # 57P02
    exc.CannotConnectNowError("the database system is starting up"),  # 57P03
    exc.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
    exc.ConnectionFailureError("connection failure"),  # 08006
    exc.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    exc.InterfaceError("connection is closed"),
    exc.InternalClientError("cannot switch to state 12; another operation is in progress"),
    ConnectionRefusedError(111, "Connection refused"),
    FileNotFoundError(2, "No such file or directory"),  # the Unix socket is gone
    TimeoutError(),
    PoolTimeout("QueuePool limit of size 10 overflow 0 reached"),
]
NOT_OUTAGES = [
    exc.UniqueViolationError("duplicate key"),
    exc.SerializationError("could not serialize access"),
    exc.DivisionByZeroError("division by zero"),
    exc.RaiseError("posting does not balance"),
    asyncpg.DataError("invalid input for query argument $1"),
    ValueError("a bug"),
]


def _wrapped(error: BaseException) -> DBAPIError:
    """As SQLAlchemy raises it: a DBAPIError whose .orig carries the SQLSTATE."""

    class _Orig(Exception):
        sqlstate = getattr(error, "sqlstate", None)

    orig = _Orig(str(error))
    orig.__cause__ = error
    return DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize("error", OUTAGES, ids=lambda e: type(e).__name__)
def test_outages_are_unavailable_raw_and_wrapped(error: Exception) -> None:
    assert is_unavailable(error)
    assert is_unavailable(_wrapped(error))


@pytest.mark.parametrize("error", NOT_OUTAGES, ids=lambda e: type(e).__name__)
def test_refusals_and_bugs_are_not(error: Exception) -> None:
    assert not is_unavailable(error)
    assert not is_unavailable(_wrapped(error))


def test_the_store_turns_disk_full_into_one_typed_error_and_keeps_the_others() -> None:
    with pytest.raises(DatabaseUnavailable) as caught, translate_errors():
        raise exc.DiskFullError("could not extend file")
    assert "53100" in caught.value.reason
    with pytest.raises(InvariantViolation), translate_errors():
        raise exc.CheckViolationError("new row violates check constraint")
    with pytest.raises(RetryableConflict), translate_errors():
        raise exc.DeadlockDetectedError("deadlock detected")


@get("/disk-full", sync_to_thread=False)
def _disk_full() -> None:
    raise exc.DiskFullError("could not extend file: No space left on device")


@get("/wrapped", sync_to_thread=False)
def _wrapped_read_only() -> None:
    raise _wrapped(exc.ReadOnlySQLTransactionError("read-only"))


@get("/bug", sync_to_thread=False)
def _bug() -> None:
    raise ZeroDivisionError


@get("/bad-value", sync_to_thread=False)
def _bad_value() -> None:
    raise _wrapped(exc.CharacterNotInRepertoireError("invalid byte sequence"))  # 22021


@get("/refused", sync_to_thread=False)
def _refused() -> None:
    raise _wrapped(exc.UniqueViolationError("duplicate key"))  # 23505, escaped a store


@get("/operational", sync_to_thread=False)
def _operational() -> None:
    raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))


@pytest.mark.parametrize("path", ["/disk-full", "/wrapped"])
async def test_an_untranslated_outage_still_answers_503_with_retry_after(path: str) -> None:
    app = Litestar([_disk_full, _wrapped_read_only, _bug], exception_handlers=exception_handlers())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get(path)
        bug = await c.get("/bug")
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response.headers["retry-after"] == "1"
    assert bug.status_code == 500, "a bug stays a 500"


async def test_escaped_driver_errors_map_by_kind_not_by_class() -> None:
    """What no store translated: a value PostgreSQL cannot hold is the caller's (422), an
    operational failure is the database's (503), a refused write is a bug (500)."""
    app = Litestar([_bad_value, _refused, _operational], exception_handlers=exception_handlers())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        bad_value, refused, operational = [
            await c.get(path) for path in ("/bad-value", "/refused", "/operational")
        ]
    assert (bad_value.status_code, bad_value.json()["code"]) == (422, "validation_error")
    assert (operational.status_code, operational.headers["retry-after"]) == (503, "1")
    assert (refused.status_code, refused.json()["code"]) == (500, "internal_error")
    assert "duplicate" not in refused.text, "no driver detail reaches a response"


def test_the_scheduler_backs_off_while_ticks_fail_and_resumes_after() -> None:
    assert tick_delay_s(5, failures=0) == 5
    assert [tick_delay_s(5, failures) for failures in (1, 2, 3)] == [10, 20, 40]
    assert tick_delay_s(5, failures=50) == BACKOFF_S_MAX
    assert tick_delay_s(3600, failures=3) == 3600, "never more often than the interval"
