"""tests/fuzz: each test's wall time is charged to the parsers whose cases it ran, and the totals
(cases, seconds, cases/s per parser) are printed at the end of the run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from fuzz_support import CASES, SECONDS


@pytest.fixture(autouse=True)
def _charge_time() -> Iterator[None]:
    before = dict(CASES)
    t0 = time.perf_counter()
    yield
    elapsed = time.perf_counter() - t0
    ran = [p for p, n in CASES.items() if n != before.get(p, 0)]
    for parser in ran:
        SECONDS[parser] += elapsed / len(ran)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    failed = len(terminalreporter.stats.get("failed", []))
    rows = {p: {"cases": n, "seconds": round(SECONDS[p], 2), "cases_per_s": round(n / SECONDS[p]) if SECONDS[p] else None}
            for p, n in sorted(CASES.items())}
    terminalreporter.section("fuzz cases")
    for parser, row in rows.items():
        terminalreporter.write_line(f"{parser:<16} {row['cases']:>10,} cases  {row['seconds']:>8.1f} s  "
                                    f"{row['cases_per_s'] or 0:>8,}/s")
    terminalreporter.write_line(f"{'total':<16} {sum(CASES.values()):>10,} cases; failed tests: {failed}")
    out = os.environ.get("SENTINEL_FUZZ_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({"parsers": rows, "failed_tests": failed}, f, indent=2)
