"""What an operator token is and who it identifies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

__all__ = ["OperatorIdentity", "OperatorToken", "Role"]

Role = Literal["admin", "finance"]


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    token_id: str
    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class OperatorToken:
    token_id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
