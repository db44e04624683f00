"""Settlement's errors: subclasses of the one exchange tree (`exchange.errors`).

ExchangeError
├── NotFound
│   └── SettlementNotFound          (404 settlement_not_found)
└── Conflict
    └── PeriodClosed                (409 period_closed)
"""

from __future__ import annotations

from exchange.errors import Conflict, NotFound

__all__ = ["PeriodClosed", "SettlementNotFound"]


class PeriodClosed(Conflict):
    """A run was asked for a period_end before the latest run's: that time is settled."""

    code = "period_closed"
    title = "Settlement period already closed"


class SettlementNotFound(NotFound):
    code = "settlement_not_found"
    title = "Settlement run not found"
