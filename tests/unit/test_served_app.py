"""`exchange serve`'s worker app tunes its process's garbage collector; the plain app (tests,
embedding) leaves its host's alone. Run in subprocesses: the collector is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

from exchange.app import GC_YOUNG_THRESHOLD

_PROBE = """
import gc, json
from exchange.app import {factory}
before = gc.get_threshold()
{factory}()
print(json.dumps({{"before": before, "after": gc.get_threshold(),
                   "frozen": gc.get_freeze_count()}}))
"""


def _probe(factory: str) -> dict[str, list[int] | int]:
    env = {"EXCHANGE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(factory=factory)],
        capture_output=True,
        text=True,
        check=True,
        env=env | {"PATH": ""},
    )
    result: dict[str, list[int] | int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_served_app_freezes_start_up_objects_and_collects_young_objects_less_often() -> None:
    served = _probe("create_served_app")
    assert served["after"] == [GC_YOUNG_THRESHOLD, *served["before"][1:]]  # type: ignore[index]
    assert served["frozen"] > 10_000  # the imported modules, the app, its routes


def test_the_plain_app_leaves_the_collector_alone() -> None:
    plain = _probe("create_app")
    assert plain["after"] == plain["before"]
    assert plain["frozen"] == 0
