"""The one retry loop (`exchange.retry.retry_conflicts`): again on a conflict, up to a
bound, then the caller's error; anything else passes straight through."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from exchange.errors import ServiceUnavailable
from exchange.retry import retry_conflicts


class Conflict(Exception):
    pass


def _flaky(
    failures: int, error: Exception | None = None
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def work() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise error or Conflict(f"lost race {len(calls)}")
        return "committed"

    return calls, work


async def test_a_conflict_runs_the_work_again_until_it_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The n-th retry waits under backoff_s * 2**(n-1) (full jitter): with the jitter at
    its top, the waits are the bounds themselves."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def record(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    monkeypatch.setattr(asyncio, "sleep", record)
    calls, work = _flaky(failures=3)
    retried: list[tuple[int, str]] = []
    result = await retry_conflicts(
        work,
        conflict=Conflict,
        attempts=5,
        backoff_s=0.01,
        exhausted=ServiceUnavailable("busy"),
        on_retry=lambda attempt, error: retried.append((attempt, str(error))),
    )
    assert result == "committed"
    assert calls == [1, 2, 3, 4]
    assert retried == [(1, "lost race 1"), (2, "lost race 2"), (3, "lost race 3")]
    assert slept == pytest.approx([0.01, 0.02, 0.04])


@pytest.mark.parametrize("attempts", [1, 3])
async def test_after_the_last_attempt_loses_the_callers_error_is_raised(attempts: int) -> None:
    calls, work = _flaky(failures=10)
    with pytest.raises(ServiceUnavailable, match="busy"):
        await retry_conflicts(
            work,
            conflict=Conflict,
            attempts=attempts,
            backoff_s=0.0001,
            exhausted=ServiceUnavailable("busy"),
        )
    assert calls == list(range(1, attempts + 1))


async def test_the_work_may_be_a_lambda_returning_an_awaitable() -> None:
    calls, work = _flaky(failures=1)

    def start() -> Awaitable[str]:  # not a coroutine function: returns one
        return work()

    result = await retry_conflicts(
        start,
        conflict=Conflict,
        attempts=2,
        backoff_s=0.0001,
        exhausted=ServiceUnavailable("busy"),
    )
    assert (result, calls) == ("committed", [1, 2])


async def test_any_other_error_is_not_retried() -> None:
    calls, work = _flaky(failures=1, error=ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        await retry_conflicts(
            work,
            conflict=Conflict,
            attempts=5,
            backoff_s=0.0001,
            exhausted=ServiceUnavailable("busy"),
        )
    assert calls == [1]
