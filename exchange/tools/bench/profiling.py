"""`--profile`: py-spy flame graphs of every server worker during each timed window.

py-spy is not a dependency (`pip install py-spy`). It samples at 100 Hz without pausing
the workers (`--nonblocking`), but it still takes CPU the server would otherwise have:
profile to see where the time goes, and measure without it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import click

from exchange.tools.bench.cluster import Server

__all__ = ["py_spy_profiler"]

SAMPLES_PER_S = 100
WAIT_MARGIN_S = 60


def py_spy_profiler(server: Server, out: Path) -> Callable[[str, float], Callable[[], None]]:
    """A function that starts py-spy on every worker for a window and returns a waiter.

    Flame graphs go to `<out stem>-profiles/<window name>-<pid>.svg` next to the JSON.
    """
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise click.ClickException("--profile needs py-spy on PATH (pip install py-spy)")
    folder = out.with_name(out.stem + "-profiles")
    folder.mkdir(parents=True, exist_ok=True)

    def start(name: str, seconds: float) -> Callable[[], None]:
        recorders = [
            subprocess.Popen(  # noqa: S603 - py-spy found on PATH, our own pids
                [
                    *(py_spy, "record", "--nonblocking", "-r", str(SAMPLES_PER_S)),
                    *("-d", str(int(seconds) + 1), "-p", str(pid)),
                    *("-o", str(folder / f"{name}-{pid}.svg")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid in server.worker_pids()
        ]

        def wait() -> None:
            for recorder in recorders:
                recorder.wait(timeout=seconds + WAIT_MARGIN_S)

        return wait

    return start
