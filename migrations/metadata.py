"""The complete schema: every package's tables on the one shared MetaData."""

from __future__ import annotations

import importlib

from exchange.tables import metadata

__all__ = ["metadata"]

# Importing these modules registers their tables on `metadata`.
for _module in (
    "partners.tables",
    "settlement.tables",
    "exchange.members.tables",
    "exchange.batches.tables",
    "partners.webhooks.tables",
):
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as exc:  # a package without tables yet
        if exc.name != _module:
            raise
