"""Settlement: runs, statements, liabilities, the scheduler (docs/settlement.md)."""

__all__: list[str] = []
