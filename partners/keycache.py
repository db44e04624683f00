"""The key cache of one server process: bounded, expiring, and never stale after a change.

Three rules keep it honest (partners.gateway feeds it and listens for changes):

- Bounded: at most `known_max` key records (least recently used go first), each for at
  most `ttl_s`; unknown key ids are never stored one by one. Instead the cache may hold
  the *directory*, the set of every registered key id (at most `directory_max` of them):
  with it, an unknown key id is answered without a query, so a flood of made-up key ids
  costs a set lookup each, however many distinct ids it uses. A key created a moment ago
  may not be in the directory yet (its NOTIFY is on its way), so a directory miss may
  still ask the database, but at most `misses_per_s` times a second (a token bucket).
- Generations: every invalidation (a NOTIFY, the listener lost or regained) bumps
  `generation`. A lookup notes the generation before it reads the database and may store
  its answer only if no invalidation happened meanwhile; a record read before a
  revocation can therefore never be cached after the revocation was announced.
- Fail closed: while `enabled` is False (no listener, so changes would go unheard)
  nothing is served from the cache and nothing is stored.

Pure bookkeeping: no I/O, no asyncio; the clock is injected.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from partners.signing import KeyRecord

__all__ = ["KeyCache", "Lookup"]


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache knows: `found` False means "ask the database"."""

    found: bool
    record: KeyRecord | None = None


_MISS = Lookup(found=False)
_UNKNOWN = Lookup(found=True, record=None)


class KeyCache:
    def __init__(
        self,
        *,
        ttl_s: float,
        known_max: int,
        directory_max: int,
        misses_per_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min(known_max, directory_max) < 1 or ttl_s <= 0 or misses_per_s <= 0:
            raise ValueError("cache bounds must be positive")
        self.ttl_s = ttl_s
        self.known_max = known_max
        self.directory_max = directory_max
        self.misses_per_s = misses_per_s
        self._clock = clock
        self._miss_tokens = misses_per_s
        self._miss_refilled = clock()
        self._known: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()
        self._directory: tuple[float, frozenset[str]] | None = None
        self.generation = 0
        self.enabled = False

    def __len__(self) -> int:
        return len(self._known)

    # -- invalidation ------------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget everything; lookups already under way may no longer store their answer."""
        self.generation += 1
        self._known.clear()
        self._directory = None

    def enable(self) -> None:
        """The listener is (again) in place: start caching from scratch."""
        self.invalidate()
        self.enabled = True

    def disable(self) -> None:
        """The listener is gone: changes would go unheard, so cache nothing."""
        self.enabled = False
        self.invalidate()

    # -- reads -------------------------------------------------------------------------------

    def get(self, key_id: str) -> Lookup:
        if not self.enabled:
            return _MISS
        now = self._clock()
        entry = self._known.get(key_id)
        if entry is not None:
            if now < entry[0]:
                self._known.move_to_end(key_id)
                return Lookup(found=True, record=entry[1])
            del self._known[key_id]
        directory = self._directory
        if directory is not None and now < directory[0] and key_id not in directory[1]:
            return _MISS if self._spend_miss_token(now) else _UNKNOWN
        return _MISS

    def _spend_miss_token(self, now: float) -> bool:
        elapsed = max(0.0, now - self._miss_refilled)
        self._miss_tokens = min(self.misses_per_s, self._miss_tokens + elapsed * self.misses_per_s)
        self._miss_refilled = now
        if self._miss_tokens < 1:
            return False
        self._miss_tokens -= 1
        return True

    def needs_directory(self) -> bool:
        if not self.enabled:
            return False
        return self._directory is None or self._clock() >= self._directory[0]

    # -- writes (each only for the generation the caller read under) --------------------------

    def put(self, key_id: str, record: KeyRecord | None, generation: int) -> None:
        if not self.enabled or generation != self.generation or record is None:
            return  # an unknown key is answered by the directory, never stored one by one
        self._known[key_id] = (self._clock() + self.ttl_s, record)
        self._known.move_to_end(key_id)
        while len(self._known) > self.known_max:
            self._known.popitem(last=False)

    def put_directory(self, key_ids: Iterable[str], generation: int) -> None:
        """Every registered key id; ignored when there are too many to hold."""
        if not self.enabled or generation != self.generation:
            return
        ids = frozenset(key_ids)
        if len(ids) > self.directory_max:
            return
        self._directory = (self._clock() + self.ttl_s, ids)
