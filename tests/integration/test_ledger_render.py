"""The HTTP layer decides what a posting request answers; the service stores and replays it.

`LedgerService` calls the `render` it was given inside the database transaction and
stores exactly what it returned with the idempotency key, so a replay answers the same
status and bytes even when the renderer has changed since (a new release, say).
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.ledger import BalanceAfter, Effect
from exchange.service import Burn, Earn, LedgerService, OpenHold, Render
from exchange.views import render_effect
from tests.support import add_partner, enrol, submit

TTL = timedelta(days=1095)


def _tagged(tag: str) -> Render:
    def render(effect: Effect, after: BalanceAfter) -> tuple[int, bytes]:
        kind = "hold" if effect.hold is not None else effect.posting.type.value
        return 299, msgspec.json.encode({"tag": tag, "kind": kind, "available": after.available})

    return render


async def test_the_service_answers_what_the_renderer_returned_and_replays_it(
    engine: AsyncEngine, clock: FrozenClock
) -> None:
    first = LedgerService(engine, clock, points_ttl=TTL, render=_tagged("v1"))
    grocer = await add_partner(engine, clock)
    member = await enrol(first, grocer)
    earned = await submit(first, Earn(grocer, member, "o-1", points=40), key="k-1")
    held = await submit(first, OpenHold(grocer, member, 15), key="k-2")
    assert (earned.status_code, msgspec.json.decode(earned.body)) == (
        299,
        {"tag": "v1", "kind": "earn", "available": 40},
    )
    assert msgspec.json.decode(held.body) == {"tag": "v1", "kind": "hold", "available": 25}

    later = LedgerService(engine, clock, points_ttl=TTL, render=_tagged("v2"))
    again = await submit(later, Earn(grocer, member, "o-1", points=40), key="k-1")
    assert (again.status_code, again.body, again.replayed) == (299, earned.body, True)
    fresh = await submit(later, Burn(grocer, member, 5), key="k-3")
    assert msgspec.json.decode(fresh.body) == {"tag": "v2", "kind": "burn", "available": 20}


async def test_a_refused_request_is_not_rendered(engine: AsyncEngine, clock: FrozenClock) -> None:
    calls: list[Effect] = []

    def render(effect: Effect, after: BalanceAfter) -> tuple[int, bytes]:
        calls.append(effect)
        return render_effect(effect, after)

    ledger = LedgerService(engine, clock, points_ttl=TTL, render=render)
    grocer = await add_partner(engine, clock)
    member = await enrol(ledger, grocer)
    refused = await submit(ledger, Burn(grocer, member, 1), key="k-1")
    assert refused.error is not None
    assert refused.error.code == "insufficient_points"
    assert calls == []
    done = await submit(ledger, Earn(grocer, member, "o-1", points=3))
    assert done.status_code == 201
    assert [effect.posting.points for effect in calls] == [3]
