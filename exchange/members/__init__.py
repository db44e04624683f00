"""Members v1.1 (contract §11): tiers, transfers, expiry reminders, export and erasure.

Only the pure tier rule is re-exported here, so that the ledger service can use it
without importing the members service (which itself builds on the ledger service):

- `_tiers`      PURE: qualifying window, tier from qualifying points
- `service`     `MembersService`: balance with tier, transfers, export, erasure
- `reminders`   the `member.points_expiring` sweep into `webhook_outbox`
- `http`        controllers (registered by `exchange.app`)
- `auth`        the `member` / `caller` dependencies: member bearer tokens
- `tables`      `member_idempotency_keys`, `webhook_outbox`
"""

from exchange.members._tiers import QUALIFYING_WINDOW, TierStatus, tier_status

__all__ = ["QUALIFYING_WINDOW", "TierStatus", "tier_status"]
