"""Concurrent balance reads share statements (`exchange.coalesce`) and still each get
their own member's balance, with the rules a lone read has: unknown, erased and
unlinked members are not found, and a read sent after a posting's answer sees it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.clock import FrozenClock
from exchange.config import Settings
from exchange.errors import MemberNotFound
from exchange.members.service import MembersService
from exchange.service import Earn, LedgerService
from tests.support import add_partner, enrol, post


async def _read(
    service: MembersService, member_id: str, partner_id: str | None
) -> tuple[int, int] | None:
    """(available, qualifying points), or None for a member the caller cannot see."""
    try:
        balance, tier = await service.read_balance(member_id, partner_id=partner_id)
    except MemberNotFound:
        return None
    return balance.available, tier.qualifying_points


async def test_concurrent_reads_share_statements_and_each_gets_its_own_balance(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    await add_partner(engine, clock, "grocer")
    await add_partner(engine, clock, "florist")
    members = [await enrol(ledger, "grocer") for _ in range(30)]
    for index, member in enumerate(members):
        await post(ledger, Earn("grocer", member, f"r{index}", points=10 * (index + 1)))
    elsewhere = await enrol(ledger, "florist")  # not linked to the grocer
    await post(ledger, Earn("florist", elsewhere, "f", points=5))
    service = MembersService(engine, clock, Settings())
    gone = await enrol(ledger, "grocer")
    await service.erase(gone)

    asks: list[tuple[str, str | None]] = [(member, "grocer") for member in members]
    asks += [
        (members[3], "grocer"),  # the same pair twice
        (members[3], None),  # the member's own token
        (elsewhere, "grocer"),
        (elsewhere, "florist"),
        (elsewhere, None),
        (gone, "grocer"),
        (gone, None),
        ("mbr_" + "0" * 26, "grocer"),  # no such member
    ]
    answers = await asyncio.gather(*(_read(service, m, p) for m, p in asks))

    expected: list[tuple[int, int] | None] = [(10 * (i + 1), 10 * (i + 1)) for i in range(30)]
    expected += [(40, 40), (40, 40), None, (5, 5), (5, 5), None, None, None]
    assert answers == expected
    # The same answers a lone read gives, one at a time.
    assert [await _read(service, m, p) for m, p in asks] == expected
    # Coalesced: the first two reads ran alone at once, the rest shared statements.
    reads = service._balances
    assert reads.lookups == 2 * len(asks)
    assert reads.fetches - len(asks) <= 4, "the concurrent reads were not coalesced"


async def test_a_read_sent_after_an_earn_is_answered_sees_the_earn(
    ledger: LedgerService, engine: AsyncEngine, clock: FrozenClock
) -> None:
    """Reads of one member run all the time; after each earn returns, the next read must
    show it, never an answer from a statement that started before the earn committed."""
    await add_partner(engine, clock, "grocer")
    member = await enrol(ledger, "grocer")
    service = MembersService(engine, clock, Settings())
    stop = asyncio.Event()

    async def keep_reading() -> None:
        while not stop.is_set():
            await _read(service, member, "grocer")

    readers = [asyncio.create_task(keep_reading()) for _ in range(8)]
    try:
        for round_ in range(1, 21):
            await asyncio.sleep(0.002 * (round_ % 3))  # land in different read phases
            await post(ledger, Earn("grocer", member, f"r{round_}", points=1))
            assert await _read(service, member, "grocer") == (round_, round_)
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert service._balances.fetches < service._balances.lookups


@pytest.mark.parametrize("partner_id", ["grocer", None])
async def test_a_lone_read_of_an_unknown_member_is_not_found(
    engine: AsyncEngine, clock: FrozenClock, partner_id: str | None
) -> None:
    service = MembersService(engine, clock, Settings())
    with pytest.raises(MemberNotFound):
        await service.read_balance("mbr_" + "1" * 26, partner_id=partner_id)
