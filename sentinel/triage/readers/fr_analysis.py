"""The text PyTorch's Flight Recorder analyser prints (``python -m torch.distributed.flight_recorder.fr_trace``,
``torchfrtrace``): one block per collective it found in error.

    Collective 39 at entry 38 errors
    group info: 0:default_pg
    collective: nccl:all_reduce
    input sizes: [[1025]]
    ...
    expected ranks: {0, 1, 2, ...}
    collective state: scheduled
    error msg: Culprit rank 22; Error type: SIZE_OR_SYNTAX_MISMATCH, Expected input sizes: '[[1025]]' does
    not match found input sizes: '[[262144]]', Culprit rank 110; Error type: ...

The parser never raises; a block cut short keeps what it has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["KIND", "CollectiveError", "looks_like", "parse"]

KIND = "Flight Recorder analysis"

_MARKER = re.compile(rb"Collective \d+ at entry \d+ errors|error msg: Culprit rank")
_HEAD = re.compile(r"^\s*Collective (\d+) at entry (\d+) errors")
_FIELD = re.compile(r"^\s*(group info|collective|input sizes|output sizes|world size|expected ranks|collective state|"
                    r"error msg):\s?(.*)$")
_CULPRIT = re.compile(r"Culprit rank (\d+); Error type: (\w+)(?:, (Expected [^,]*?'[^']*' does not match found [^']*'[^']*'))?")


@dataclass
class CollectiveError:
    """One collective the analyser found in error: its sequence number, group, op, sizes, and the
    culprit ranks with their error type and detail."""

    seq: int
    entry: int
    group: str = ""
    op: str = ""
    input_sizes: str = ""
    world_size: int | None = None
    state: str = ""
    culprits: list[tuple[int, str, str]] = field(default_factory=list)  # (rank, error type, detail)


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) holds the analyser's error blocks."""
    return bool(_MARKER.search(head))


def parse(text: str) -> list[CollectiveError]:
    """Every error block of ``text``, in order. Never raises."""
    out: list[CollectiveError] = []
    cur: CollectiveError | None = None
    for line in text.splitlines():
        if len(line) > 65536:
            continue
        h = _HEAD.match(line)
        if h:
            cur = CollectiveError(int(h[1]), int(h[2]))
            out.append(cur)
            continue
        f = _FIELD.match(line)
        if not f or cur is None:
            continue
        key, value = f[1], f[2].strip()
        if key == "group info":
            cur.group = value
        elif key == "collective":
            cur.op = value
        elif key == "input sizes":
            cur.input_sizes = value
        elif key == "world size" and value.isdigit() and len(value) < 10:
            cur.world_size = int(value)
        elif key == "collective state":
            cur.state = value
        elif key == "error msg":
            cur.culprits = [(int(m[1]), m[2], m[3] or "") for m in _CULPRIT.finditer(value[:65536])]
    return out
