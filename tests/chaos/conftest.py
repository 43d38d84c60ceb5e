"""Chaos fixtures: a real cuda-gdb stand-in and real small filesystems, reaped at teardown
(mounts included). The daemon and journal helpers are in chaos_support.py."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_support import HELPERS, SmallFs


@pytest.fixture
def debugger(tmp_path: Path) -> str:
    """An executable cuda-gdb stand-in (tests/helpers/fake_cuda_gdb.py); CI has no GPU and no cuda-gdb."""
    exe = tmp_path / "cuda-gdb"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {HELPERS / 'fake_cuda_gdb.py'} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


@pytest.fixture
def small_fs() -> Iterator[Callable[[int], SmallFs]]:
    """small_fs(size) -> a mounted SmallFs, or a skip saying why none could be mounted."""
    made: list[SmallFs] = []

    def make(size_bytes: int) -> SmallFs:
        fs = SmallFs(size_bytes)
        made.append(fs)
        why = fs.mount()
        if why is not None:
            pytest.skip(f"cannot mount a small filesystem for the full-disk test: {why}")
        return fs

    try:
        yield make
    finally:
        for fs in made:
            fs.cleanup()
