"""asyncpg refusing to encode an argument is the request's fault (422), not a lost
connection (503): the store's reads now run on asyncpg, where SQLAlchemy used to wrap it."""

from __future__ import annotations

import asyncpg
import pytest
from asyncpg.exceptions._base import DataError as ClientDataError

from exchange.errors import DatabaseUnavailable, Unprocessable
from exchange.store import is_connection_lost, is_unavailable, translate_errors


def test_an_argument_asyncpg_cannot_encode_is_422_and_keeps_the_connection() -> None:
    refused = ClientDataError("invalid input for query argument $3 (date value out of range)")
    assert not is_connection_lost(refused)
    assert not is_unavailable(refused)
    with pytest.raises(Unprocessable), translate_errors():
        raise refused


def test_other_interface_errors_are_still_an_unavailable_database() -> None:
    closed = asyncpg.InterfaceError("connection is closed")
    assert is_connection_lost(closed)
    with pytest.raises(DatabaseUnavailable), translate_errors():
        raise closed
