"""What a hung test was waiting for, printed before pytest-timeout ends the run.

pytest-timeout (`timeout` in pyproject.toml) dumps every thread's stack and exits; for an
asyncio test that shows only the event loop's `select`. This plugin prints, shortly before,
every task of the loop the main thread is running, each with the await it is parked on:
the request, the lock or the future that never came back.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from types import FrameType
from typing import Any

import pytest

EARLY_S = 10.0  # the tasks are printed this long before the timeout's own dump

_timers: dict[str, threading.Timer] = {}


def _running_loop(frame: FrameType | None) -> asyncio.AbstractEventLoop | None:
    """The event loop whose `run_forever` is on the main thread's stack, if any."""
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, asyncio.AbstractEventLoop):
            return candidate
        frame = frame.f_back
    return None


def _print_tasks(nodeid: str) -> None:
    main = threading.main_thread().ident
    loop = _running_loop(sys._current_frames().get(main or 0))
    out = io.StringIO()
    out.write(f"\n+++ {nodeid} is about to time out; the tasks of its event loop:\n")
    if loop is None:
        out.write("(no event loop is running on the main thread)\n")
    else:
        for task in list(asyncio.all_tasks(loop)):  # a snapshot; the loop is stuck anyway
            out.write(f"--- {task!r}\n")
            task.print_stack(limit=30, file=out)
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    if settings.timeout and settings.timeout > EARLY_S:
        timer = threading.Timer(settings.timeout - EARLY_S, _print_tasks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
        _timers[item.nodeid] = timer
    # None: pytest-timeout's own timer is set as well


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    timer = _timers.pop(item.nodeid, None)
    if timer is not None:
        timer.cancel()
