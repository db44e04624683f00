"""`exchange bench` says which interpreter it measured: the same code needed 14% less server
CPU per balance read on a static interpreter built with PGO and LTO than on a shared
libpython, as this machine's pyenv build is (docs/performance.md, "Which Python"), so a figure
compares only with figures from the same interpreter."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from exchange.tools.bench.report import interpreter, libpython_linkage, unoptimized

# Lines of /proc/<pid>/maps, as Linux writes them.
_PYENV = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fd:01 1 /root/.pyenv/versions/3.11.7/bin/python3.11
7f7b81200000-7f7b81400000 r--p 0 fd:01 2 /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
7f7b81600000-7f7b81628000 r--p 00000000 fd:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
"""
_DEBIAN = """\
557a2e600000-557a2e6c3000 r--p 00000000 fd:01 4 /usr/bin/python3.11
7f25f1d8d000-7f25f1db3000 r--p 00000000 fd:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6
7f25f1000000-7f25f1010000 r--p 0 fd:01 5 /v/lib/python3.11/site-packages/nacl/_sodium.abi3.so
"""


def test_a_mapped_libpython_is_a_shared_interpreter_and_none_is_static() -> None:
    assert libpython_linkage(_PYENV) == "shared"
    assert libpython_linkage(_DEBIAN) == "static"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux's /proc only")
def test_the_running_interpreter_is_described_as_it_is() -> None:
    described = interpreter()

    assert described["version"] == ".".join(map(str, sys.version_info[:3]))
    assert described["executable"] == os.path.realpath(sys.executable)
    mapped = any("/libpython" in line for line in Path("/proc/self/maps").read_text().splitlines())
    assert described["libpython"] == ("shared" if mapped else "static")
    optimized = "--enable-optimizations" in str(sysconfig.get_config_var("CONFIG_ARGS"))
    assert described["unoptimized"] == (mapped and not optimized)


@pytest.mark.parametrize(
    ("linkage", "config_args", "expected"),
    [
        ("shared", "'--enable-shared' '--prefix=/root/.pyenv/versions/3.11.7'", True),
        ("shared", "'--enable-shared' '--enable-optimizations' '--with-lto'", False),
        ("static", "'--enable-shared' '--prefix=/usr'", False),
        (None, "", False),
    ],
)
def test_only_a_shared_build_configured_without_optimizations_is_unoptimized(
    linkage: str | None, config_args: str, expected: bool
) -> None:
    assert unoptimized(linkage, config_args) is expected
