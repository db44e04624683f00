"""Settlement's errors: subclasses of the one exchange tree (`exchange.errors`).

ExchangeError
├── NotFound
│   ├── SettlementNotFound          (404 settlement_not_found)
│   ├── DocumentNotFound            (404 document_not_found)
│   └── PaymentNotFound             (404 payment_not_found)
├── Conflict
│   ├── PeriodClosed                (409 period_closed)
│   └── RunUnreconciled             (409 run_unreconciled)
└── Unprocessable
    ├── CurrencyMismatch            (422 currency_mismatch)
    └── Overpayment                 (422 overpayment)
"""

from __future__ import annotations

from exchange.errors import Conflict, NotFound, Unprocessable

__all__ = [
    "CurrencyMismatch",
    "DocumentNotFound",
    "Overpayment",
    "PaymentNotFound",
    "PeriodClosed",
    "RunUnreconciled",
    "SettlementNotFound",
]


class PeriodClosed(Conflict):
    """A run was asked for a period_end before the latest run's: that time is settled."""

    code = "period_closed"
    title = "Settlement period already closed"


class SettlementNotFound(NotFound):
    code = "settlement_not_found"
    title = "Settlement run not found"


class RunUnreconciled(Conflict):
    """A run whose controls failed cannot be approved: finance must find out why first."""

    code = "run_unreconciled"
    title = "Settlement run does not reconcile"


class DocumentNotFound(NotFound):
    code = "document_not_found"
    title = "Settlement document not found"


class PaymentNotFound(NotFound):
    code = "payment_not_found"
    title = "Payment not found"


class CurrencyMismatch(Unprocessable):
    code = "currency_mismatch"
    title = "Payment currency is not the partner's settlement currency"


class Overpayment(Unprocessable):
    code = "overpayment"
    title = "Payment exceeds what is open on the document"
