"""The ledger of the coalition points exchange and the service around it (docs/architecture.md).

Import from the modules themselves; the package exports nothing.
"""

__all__: list[str] = []
