"""Operators: the admin and finance roles, their bearer tokens, and how a request proves
it is one of them.

- `_tokens`   create, list, revoke and authenticate tokens (only a token's SHA-256 is kept)
- `_store`    the `operator_tokens` rows
- `auth`      the litestar dependencies `admin_caller` and `staff_caller`, and the bearer
              header parsing member tokens share (imported by controllers only: it needs
              the process's services)
"""

from exchange.operators._tokens import (
    OPERATOR_TOKEN_SHAPE,
    OperatorIdentity,
    OperatorToken,
    Role,
    authenticate_operator,
    create_operator_token,
    hash_token,
    list_operator_tokens,
    revoke_operator_token,
)

__all__ = [
    "OPERATOR_TOKEN_SHAPE",
    "OperatorIdentity",
    "OperatorToken",
    "Role",
    "authenticate_operator",
    "create_operator_token",
    "hash_token",
    "list_operator_tokens",
    "revoke_operator_token",
]
