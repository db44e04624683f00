"""The partner API end to end: signed requests through the real app on real PostgreSQL."""

from __future__ import annotations

import httpx

from tests.http.conftest import PartnerFactory


async def test_enrol_earn_burn_and_read_the_balance(
    onboard: PartnerFactory, client: httpx.AsyncClient
) -> None:
    grocer = await onboard("grocer")
    cinema = await onboard("cinema")
    member = await grocer.client.enrol_member(reference="loyalty-card-1")
    member_id = member["member_id"]
    earn = await grocer.client.earn(member_id, 120, reference="order-991")
    assert earn.status == 201
    assert earn["balance_after"] == {"available": 120, "held": 0, "pending": 0}
    burn = await cinema.client.burn(member_id, 20, reference="ticket-1")
    assert burn["balance_after"]["available"] == 100
    balance = await grocer.client.balance(member_id)
    assert balance["available"] == 100
    assert balance["expiring"][0]["points"] == 100
    fetched = await grocer.client.get_transaction(earn["transaction_id"])
    assert fetched["transaction_id"] == earn["transaction_id"]
    listed = await cinema.client.list_transactions()
    assert [item["transaction_id"] for item in listed["items"]] == [burn["transaction_id"]]
