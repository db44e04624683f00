"""How a background worker stops: asked first, waited for, cancelled only when late.

The batch processors, the webhook deliverer and the scheduler each check a stop flag
between units of work and are woken from their idle wait when it is set. Their `stop`
sets it, then calls `finish_or_cancel`: the tasks end on their own after the unit in
hand (a chunk of a batch, a round of deliveries, a tick), so database work in flight is
committed or rolled back by its own code and never interrupted mid-statement. A task still
running after `grace_s` is cancelled (its database transaction rolls back whole) and the
log says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection

from exchange.logs import get_logger

__all__ = ["finish_or_cancel"]

_log = get_logger("exchange.background")


async def finish_or_cancel(
    tasks: Collection[asyncio.Task[None]], *, grace_s: float, worker: str
) -> None:
    """Wait up to `grace_s` for tasks already asked to stop; cancel the late ones."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=grace_s)
    for task in late:
        _log.warning("worker_cancelled_at_stop", worker=worker, grace_s=grace_s)
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
