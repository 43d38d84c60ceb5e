"""One reader per artifact kind: each module says whether a file looks like its kind
(``looks_like(head: bytes) -> bool``, on the file's first bytes) and parses it into plain data.

Every reader module has ``KIND`` (its name for people) and ``looks_like``; ``READERS`` lists them in
the order ``detect`` asks. Adding a reader: its module here, plus one entry in ``READERS``.
"""

from __future__ import annotations

from types import ModuleType

from sentinel.triage.readers import (
    compute_sanitizer,
    cudagdb,
    flight_recorder,
    fr_analysis,
    kernel_log,
    serving_log,
    watchdog,
)

__all__ = ["HEAD_BYTES", "READERS", "detect"]

HEAD_BYTES = 64 * 1024  # what detect() is given of a file: enough for any reader's markers

# compute_sanitizer before serving_log: a sanitizer report often carries the program's "CUDA error:"
# line too, and its own reports are the better evidence.
READERS: tuple[ModuleType, ...] = (flight_recorder, fr_analysis, cudagdb, kernel_log, watchdog, compute_sanitizer,
                                   serving_log)


def detect(head: bytes) -> ModuleType | None:
    """The reader whose kind ``head`` (up to HEAD_BYTES of a file) looks like; None when none does."""
    for reader in READERS:
        if reader.looks_like(head):
            return reader
    return None
