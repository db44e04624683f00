"""Batch response bodies (contract §9), as msgspec structs: the JSON the endpoints have
always answered, now described field by field in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

__all__ = ["BatchAccepted", "BatchResult", "BatchResultPage", "BatchStatus"]


class BatchAccepted(msgspec.Struct, frozen=True):
    """202 to `POST /v1/batches`: the batch is stored; its items post in the background."""

    batch_id: str
    status: Literal["accepted"]
    items: int


class BatchStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """`GET /v1/batches/{batch_id}`: progress; `completed_at` once every item has a result."""

    batch_id: str
    status: Literal["processing", "completed"]
    items: int
    posted: int
    rejected: int
    created_at: datetime
    completed_at: datetime | msgspec.UnsetType = msgspec.UNSET


class BatchResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """One item's result: `transaction_id` when posted, the error `code` when rejected."""

    item_id: str
    status: Literal["posted", "rejected"]
    transaction_id: str | msgspec.UnsetType = msgspec.UNSET
    code: str | msgspec.UnsetType = msgspec.UNSET


class BatchResultPage(msgspec.Struct, frozen=True, omit_defaults=True):
    """Results in file order; `next` (the `after` of the next page) while there may be more."""

    results: list[BatchResult]
    next: str | msgspec.UnsetType = msgspec.UNSET
