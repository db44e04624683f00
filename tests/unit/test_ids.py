"""The id generator: UUIDv7 that strictly increase within a process, whose random bits are
never handed out twice, not even to a forked child (the workers are forked)."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest

from exchange.ids import _MonotonicUUID7, new_id

RANDOM_BITS = (1 << 62) - 1


def test_ids_are_uuid7_of_the_rfc_variant_and_strictly_increase() -> None:
    ids = [new_id() for _ in range(20_000)]  # more than a pool's words, and many per ms
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in ids)
    assert all(earlier < later for earlier, later in itertools.pairwise(ids))
    assert len({value.int & RANDOM_BITS for value in ids}) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_the_random_bits_its_parent_goes_on_to_use() -> None:
    ids = _MonotonicUUID7()  # a fresh pool: never one that the first call happens to empty
    ids()  # the parent has read a pool of random words and used one or two
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child only
        try:
            os.close(read_end)
            words = b"".join((ids().int & RANDOM_BITS).to_bytes(8, "big") for _ in range(50))
            os.write(write_end, words)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        received = pipe.read()
    os.waitpid(child, 0)
    childs = {int.from_bytes(received[at : at + 8], "big") for at in range(0, len(received), 8)}
    parents = {ids().int & RANDOM_BITS for _ in range(50)}
    assert len(childs) == 50
    assert not childs & parents
