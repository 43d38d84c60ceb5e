"""Which ranks of one collective disagree with the others: the comparison PyTorch's Flight Recorder
analyser makes (``fr_trace``'s COLLECTIVE_TYPE_MISMATCH, SIZE_OR_SYNTAX_MISMATCH, DTYPE_MISMATCH),
shared by the offline cross-rank analysis of dumps (``readers.flight_recorder.cross_rank``) and the
live hang analysis (``hangs``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FIELDS", "odd_ones"]

# (field, the analyser's name for a rank that differs in it)
FIELDS: tuple[tuple[str, str], ...] = (("op", "COLLECTIVE_TYPE_MISMATCH"), ("size", "SIZE_OR_SYNTAX_MISMATCH"),
                                       ("dtype", "DTYPE_MISMATCH"))


def odd_ones(by_rank: Mapping[int, Mapping[str, Any]],
             fields: Sequence[tuple[str, str]] = FIELDS) -> list[dict[str, Any]]:
    """The ranks whose value of a field differs from the one most ranks have (ties: the lowest rank's
    value is the expected one), for each ``(field, error)`` in ``fields``, as ``{"rank", "error",
    "expected", "found"}``, by field, then by rank. ``by_rank`` maps a rank to its collective's fields;
    a field a rank lacks is skipped for it."""
    if not by_rank:
        return []
    lowest = by_rank[min(by_rank)]
    out = []
    for key, error in fields:
        values = [v[key] for v in by_rank.values() if key in v]
        if not values:
            continue
        expected = max(set(values), key=lambda x: (values.count(x), x == lowest.get(key)))
        out += [{"rank": r, "error": error, "expected": expected, "found": v[key]}
                for r, v in sorted(by_rank.items()) if key in v and v[key] != expected]
    return out
