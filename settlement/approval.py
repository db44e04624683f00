"""Run approval (contract §8): a computed run becomes approved and issues its documents.

In ONE database transaction (`settlement.finance.FinanceService.approve`): the approval
row, one numbered document per line with net != 0, one `statement.ready` event per
document, and the audit line. A run that does not reconcile is refused. Approving again
returns the first approval unchanged; two concurrent approvals of one run converge on the
primary key of `settlement_approvals` (the second waits for the first to commit, then
finds its row and issues nothing). The rows are `settlement.store`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from settlement.errors import RunUnreconciled

if TYPE_CHECKING:  # the store imports this module: its types only, never at run time
    from settlement.store import RunHeader

__all__ = ["Approval", "check_approvable"]


@dataclass(frozen=True, slots=True)
class Approval:
    run_id: str
    approved_by: str
    approved_at: datetime


def check_approvable(header: RunHeader) -> None:
    """Only a reconciled run may be approved: its figures are what documents will bill."""
    if not header.reconciled:
        raise RunUnreconciled(
            f"Run {header.run_id} does not reconcile (failed checks: "
            f"{', '.join(header.checks.failed())}); it cannot be approved."
        )
