"""Reading a batch file (contract §9): JSON `{"items": [...]}` or CSV with a header row.

The whole file is read and checked before anything is stored: a file with any malformed
item is refused whole (`BatchMalformed`), its detail naming every bad line (CSV) or item
(JSON, 1-based). A well-formed item the ledger later refuses is not malformed: it is
processed and `rejected` on its own.
"""

from __future__ import annotations

import csv
from datetime import datetime
from typing import Annotated, Any

import msgspec

from exchange.errors import BatchMalformed, PayloadTooLarge
from exchange.schemas import REFERENCE_PATTERN, MemberId, MoneyIn, Points, Reference

__all__ = [
    "CSV_COLUMNS",
    "ITEMS_MAX",
    "BatchUpload",
    "BurnItem",
    "EarnItem",
    "Item",
    "ReversalItem",
    "decode_item",
    "encode_item",
    "parse_batch",
]

ITEMS_MAX = 10_000
ERRORS_SHOWN = 20  # a detail naming every bad line of a 10,000-line file helps no one
CSV_COLUMNS = (
    "item_id",
    "type",
    "member_id",
    "points",
    "purchase_amount",
    "purchase_currency",
    "reference",
    "transaction_id",
    "available_at",
    "expires_at",
)
ItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=REFERENCE_PATTERN)]
Time = Annotated[datetime, msgspec.Meta(tz=True)]
TransactionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class EarnItem(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="earn", tag_field="type"
):
    item_id: ItemId
    member_id: MemberId
    reference: Reference
    points: Points | None = None
    purchase: MoneyIn | None = None
    available_at: Time | None = None
    expires_at: Time | None = None


class BurnItem(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="burn", tag_field="type"
):
    item_id: ItemId
    member_id: MemberId
    points: Points
    reference: Reference | None = None


class ReversalItem(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="reversal", tag_field="type"
):
    item_id: ItemId
    transaction_id: TransactionId
    points: Points | None = None
    reference: Reference | None = None


Item = EarnItem | BurnItem | ReversalItem


class BatchFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    items: list[msgspec.Raw]


class BatchUpload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The JSON file as the API describes it (items are parsed one by one, so that a bad
    item is reported with its position rather than failing the decode as a whole)."""

    items: list[Item]


def parse_batch(body: bytes, media_type: str) -> list[Item]:
    """The items of a batch file, or BatchMalformed naming what is wrong where."""
    if media_type == "text/csv":
        items, errors = _parse_csv(body)
    else:
        items, errors = _parse_json(body)
    if errors:
        shown = "; ".join(errors[:ERRORS_SHOWN])
        more = f" (and {len(errors) - ERRORS_SHOWN} more)" if len(errors) > ERRORS_SHOWN else ""
        raise BatchMalformed(f"Nothing was accepted. {shown}{more}.")
    if not items:
        raise BatchMalformed("The batch has no items.")
    if len(items) > ITEMS_MAX:
        raise PayloadTooLarge(f"A batch holds at most {ITEMS_MAX} items.")
    return items


_UPLOAD = msgspec.json.Decoder(BatchUpload)
_ENVELOPE = msgspec.json.Decoder(BatchFile)
_ITEM: msgspec.json.Decoder[Item] = msgspec.json.Decoder(Item)
_ENCODER = msgspec.json.Encoder()


def decode_item(data: bytes | str) -> Item:
    """One item from its JSON (a file's item, or an item as stored with its batch)."""
    return _ITEM.decode(data)


def encode_item(item: Item) -> str:
    """An item's JSON as it is stored with its batch (what `decode_item` reads back)."""
    return _ENCODER.encode(item).decode()


def _parse_json(body: bytes) -> tuple[list[Item], list[str]]:
    try:  # a well-formed file, the usual case: decoded whole, in one pass
        return _UPLOAD.decode(body).items, []
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass  # something is wrong: find what, and where
    try:
        envelope = _ENVELOPE.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return [], [f"the body is not {{'items': [...]}}: {exc}"]
    if len(envelope.items) > ITEMS_MAX:
        raise PayloadTooLarge(f"A batch holds at most {ITEMS_MAX} items.")
    items: list[Item] = []
    errors: list[str] = []
    for number, raw in enumerate(envelope.items, start=1):
        try:
            items.append(decode_item(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            errors.append(f"item {number}: {exc}")
    return items, errors


def _parse_csv(body: bytes) -> tuple[list[Item], list[str]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], ["the file is not UTF-8"]
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    problem = _header_problem(header)
    if problem or header is None:
        return [], [f"line 1: {problem or 'no header row'}"]
    items: list[Item] = []
    errors: list[str] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line (often the last) carries nothing
            if len(items) >= ITEMS_MAX:
                raise PayloadTooLarge(f"A batch holds at most {ITEMS_MAX} items.")
            try:
                items.append(_csv_item(header, row))
            except (ValueError, msgspec.ValidationError) as exc:
                errors.append(f"line {reader.line_num}: {exc}")
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    return items, errors


def _header_problem(header: list[str] | None) -> str | None:
    if header is None:
        return "no header row"
    unknown = [name for name in header if name not in CSV_COLUMNS]
    if unknown:
        return f"unknown column {unknown[0]!r}; columns are {', '.join(CSV_COLUMNS)}"
    if len(set(header)) != len(header):
        return "a column is named twice"
    if "item_id" not in header or "type" not in header:
        return "the header needs item_id and type"
    return None


def _csv_item(header: list[str], row: list[str]) -> Item:
    if len(row) != len(header):
        raise ValueError(f"{len(row)} fields, the header has {len(header)}")
    cells = {name: value for name, value in zip(header, row, strict=True) if value != ""}
    fields: dict[str, Any] = {
        name: value for name, value in cells.items() if not name.startswith("purchase_")
    }
    if "points" in fields:
        if not fields["points"].isdigit():
            raise ValueError("points must be a whole number")
        fields["points"] = int(fields["points"])
    if "purchase_amount" in cells or "purchase_currency" in cells:
        fields["purchase"] = {
            "amount": cells.get("purchase_amount", ""),
            "currency": cells.get("purchase_currency", ""),
        }
    item: Item = msgspec.convert(fields, type=Item)
    return item
