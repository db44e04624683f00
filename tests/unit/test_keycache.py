"""The key cache's bookkeeping: bounded, expiring, generation-checked, fail closed."""

from __future__ import annotations

import pytest

from partners.keycache import KeyCache
from partners.signing import KeyRecord


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(key_id: str) -> KeyRecord:
    return KeyRecord(key_id, "grocer", b"k" * 32, key_active=True, partner_active=True)


def _cache(clock: _Clock, **bounds: float) -> KeyCache:
    settings = {"ttl_s": 60.0, "known_max": 3, "directory_max": 5, "misses_per_s": 2.0}
    cache = KeyCache(**(settings | bounds), clock=clock)  # type: ignore[arg-type]
    cache.enable()
    return cache


def test_at_most_known_max_records_the_least_recently_used_go_first() -> None:
    cache = _cache(_Clock())
    for key_id in ("a", "b", "c"):
        cache.put(key_id, _record(key_id), cache.generation)
    assert cache.get("a").found  # "a" is now the most recently used
    cache.put("d", _record("d"), cache.generation)
    assert len(cache) == 3
    assert not cache.get("b").found
    assert [cache.get(key_id).found for key_id in ("a", "c", "d")] == [True, True, True]


def test_records_expire_after_the_ttl() -> None:
    clock = _Clock()
    cache = _cache(clock)
    cache.put("a", _record("a"), cache.generation)
    clock.now += 59.9
    assert cache.get("a").record == _record("a")
    clock.now += 0.2
    assert not cache.get("a").found
    assert len(cache) == 0


def test_an_answer_read_before_an_invalidation_is_not_stored() -> None:
    cache = _cache(_Clock())
    read_under = cache.generation
    cache.invalidate()  # a NOTIFY arrived while the read was under way
    cache.put("a", _record("a"), read_under)
    cache.put_directory(["a"], read_under)
    assert not cache.get("a").found
    assert cache.needs_directory()


def test_without_a_listener_nothing_is_served_or_stored() -> None:
    cache = _cache(_Clock())
    cache.put("a", _record("a"), cache.generation)
    cache.disable()
    assert not cache.get("a").found
    cache.put("a", _record("a"), cache.generation)
    cache.put_directory(["a"], cache.generation)
    assert len(cache) == 0
    assert not cache.needs_directory()
    cache.enable()
    assert not cache.get("a").found, "what was cached before the gap is gone"


def test_the_directory_answers_unknown_ids_within_a_budget_of_database_misses() -> None:
    clock = _Clock()
    cache = _cache(clock)
    cache.put_directory(["a", "b"], cache.generation)
    assert not cache.needs_directory()
    answers = [cache.get(f"x{i}") for i in range(100)]
    asked = [lookup for lookup in answers if not lookup.found]
    assert len(asked) == 2, "two misses a second may still ask the database"
    assert all(lookup.record is None for lookup in answers if lookup.found)
    assert not cache.get("a").found, "a known id is read from the database, then cached"
    clock.now += 1.0
    assert [cache.get(f"y{i}").found for i in range(3)] == [False, False, True]
    clock.now += 60.0
    assert cache.needs_directory(), "the directory expires like a record"


def test_a_directory_too_large_to_hold_is_not_used() -> None:
    cache = _cache(_Clock())
    cache.put_directory([f"k{i}" for i in range(6)], cache.generation)
    assert cache.needs_directory()
    assert not cache.get("unknown").found


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        KeyCache(ttl_s=60, known_max=0, directory_max=1, misses_per_s=1)
