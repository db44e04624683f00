"""A worker process of `exchange serve` ends with the command that started it.

granian serves from worker processes (one at least), and uvicorn does with `--workers`
above one; both start them with `multiprocessing`. When the command is killed outright
(SIGKILL, the OOM killer), nothing told its workers: they went on serving, and posting a
batch, on the same port, and a new `exchange serve` started beside them (granian lets two
processes share a port). A worker therefore waits, in a thread, on the pipe multiprocessing
keeps open to its parent; when the command is gone it sends itself SIGTERM, the same
graceful stop the command would have asked for (a posting batch in flight commits or
rolls back whole: nothing is lost or doubled).

A process not started by multiprocessing (the command itself, which serves in-process
under uvicorn with one worker; tests; embedding) does nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

__all__ = ["exit_with_the_command"]


def exit_with_the_command() -> bool:
    """In a worker process, stop this process once its parent is gone. Returns whether
    this process watches its parent."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return False
    threading.Thread(
        target=_stop_after, args=(parent,), name="exit-with-the-command", daemon=True
    ).start()
    return True


def _stop_after(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns when the parent's end of the pipe closes: it has exited
    os.kill(os.getpid(), signal.SIGTERM)
