"""Shared pieces of tests/fuzz: the two hypothesis variants of each property, the case counter
that tests/fuzz/conftest.py reports, and the byte mutator of the seeded loops.

Every fuzz test has a CI variant (derandomized, a few seconds) and a long one (``@pytest.mark.slow``,
``make test-long``). A case is one input handed to a parser; the counts per parser and the rate
are printed at the end of the run (and written as JSON to $SENTINEL_FUZZ_REPORT when set).
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cuda-gdb"

# CI: the same examples every run (derandomize), no example database (a stored failure would
# change what CI runs), no deadline (a 2-core runner under load must not flake).
CI = settings(derandomize=True, database=None, deadline=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
# Long: random exploration; a failure prints the seed and the shrunk example to reproduce it.
LONG = settings(CI, derandomize=False)

CASES: dict[str, int] = defaultdict(int)
SECONDS: dict[str, float] = defaultdict(float)


def count(parser: str, n: int = 1) -> None:
    CASES[parser] += n


def fuzz(parser: str, *strategies: Any, ci: int, long: int) -> Callable[[Callable[..., None]], tuple]:
    """Decorate a property: returns (CI test, long test), both counting their cases under ``parser``."""

    def wrap(prop: Callable[..., None]) -> tuple:
        @functools.wraps(prop)
        def counted(*args: Any, **kwargs: Any) -> None:
            CASES[parser] += 1
            prop(*args, **kwargs)

        ci_test = settings(CI, max_examples=ci)(given(*strategies)(counted))
        long_test = pytest.mark.slow(settings(LONG, max_examples=long)(given(*strategies)(counted)))
        return ci_test, long_test

    return wrap


INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x20, 0x28, 0x29, 0x3A)


def mutate(data: bytes, rng: random.Random, max_ops: int = 8, max_len: int = 1 << 20) -> bytes:
    """A few random edits: bit flips, interesting bytes, deletions, insertions, duplicated runs,
    truncation. The classic dumb-fuzzer operators, seeded."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice(INTERESTING_BYTES)
        elif op == 2 and buf:
            del buf[pos: pos + rng.randint(1, 64)]
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 32))
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start: start + rng.randint(1, 256)]
            buf[pos:pos] = chunk * rng.randint(1, 16)
        elif op == 5:
            del buf[pos:]
        elif buf:
            buf[pos % len(buf)] = rng.randrange(256)
    return bytes(buf[:max_len])
