"""Reading a JSON batch file: a well-formed file is read whole in one pass; a file with a
bad item is refused whole, naming every bad item by its position (contract §9)."""

from __future__ import annotations

import json

import msgspec
import pytest

from exchange.batches.parse import (
    BurnItem,
    EarnItem,
    Item,
    ReversalItem,
    decode_item,
    encode_item,
    parse_batch,
)
from exchange.errors import BatchMalformed, PayloadTooLarge

MEMBER = "mem_01a21bad4f5e7186b020a11b1f8c8add"
GOOD = [
    {"type": "earn", "item_id": "e-1", "member_id": MEMBER, "reference": "r1", "points": 5},
    {"type": "burn", "item_id": "b-1", "member_id": MEMBER, "points": 3},
    {"type": "reversal", "item_id": "v-1", "transaction_id": "01a21bad-7f85", "points": 1},
    {
        "type": "earn",
        "item_id": "e-2",
        "member_id": MEMBER,
        "reference": "r2",
        "purchase": {"amount": "12.50", "currency": "EUR"},
    },
]


def _file(items: list[dict[str, object]]) -> bytes:
    return json.dumps({"items": items}).encode()


def test_a_well_formed_file_gives_every_item_in_order_as_one_by_one_decoding_would() -> None:
    items = parse_batch(_file(GOOD), "application/json")
    assert [type(item) for item in items] == [EarnItem, BurnItem, ReversalItem, EarnItem]
    one_by_one = [msgspec.json.decode(json.dumps(item), type=Item) for item in GOOD]
    assert items == one_by_one


def test_a_file_with_bad_items_is_refused_naming_each_bad_item_and_only_those() -> None:
    bad = [
        GOOD[0],
        {**GOOD[0], "points": "five"},
        GOOD[1],
        {**GOOD[1], "type": "gift"},
        {**GOOD[0], "colour": "red"},
    ]
    with pytest.raises(BatchMalformed) as refused:
        parse_batch(_file(bad), "application/json")
    detail = refused.value.detail
    named = {number for number in range(1, 6) if f"item {number}:" in detail}
    assert named == {2, 4, 5}


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"items": 3}', b'{"items": [], "extra": 1}', b"[]"],
    ids=["truncated", "items-not-a-list", "unknown-field", "not-an-object"],
)
def test_a_body_that_is_not_an_items_envelope_is_refused(body: bytes) -> None:
    with pytest.raises(BatchMalformed, match="the body is not"):
        parse_batch(body, "application/json")


def test_more_items_than_a_batch_holds_are_refused_as_too_large() -> None:
    items = [{**GOOD[1], "item_id": f"b-{n}"} for n in range(10_001)]
    with pytest.raises(PayloadTooLarge):
        parse_batch(_file(items), "application/json")


def test_an_item_stored_with_its_batch_reads_back_as_itself() -> None:
    items = parse_batch(_file(GOOD), "application/json")
    assert [decode_item(encode_item(item)) for item in items] == items
