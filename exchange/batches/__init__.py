"""Batches (contract §9): partner files of earn, burn and reversal items.

parse.py     read JSON or CSV, every item checked up front (malformed → refused whole)
commands.py  an item as the ledger command of its single endpoint; its idempotency key
schemas.py   the response bodies (BatchAccepted, BatchStatus, BatchResultPage)
store.py     all SQL (batches, batch_items, batch_item_results)
service.py   BatchService: accept, status, results, the background processor
http.py      the controller (registered in exchange.app)
"""

from exchange.batches.parse import CSV_COLUMNS, ITEMS_MAX, parse_batch
from exchange.batches.service import BatchService

__all__ = ["CSV_COLUMNS", "ITEMS_MAX", "BatchService", "parse_batch"]
