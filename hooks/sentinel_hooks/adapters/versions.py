"""Checking a framework's version against an adapter's requirement strings, with the stdlib only
(``packaging`` is not always importable in a serving process).

The verdicts (``Adapter.status()["version_check"]``; base.py says what each one changes: nothing
but one log line):

    VERIFIED      an ``==`` pin matches exactly (a local label such as ``+cpu`` aside)
    IN_RANGE      some requirement holds, but no pin matches exactly
    OUT_OF_RANGE  no requirement holds
    UNKNOWN       no version could be read
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

__all__ = ["VERIFIED", "IN_RANGE", "OUT_OF_RANGE", "UNKNOWN", "check_version", "release"]

VERIFIED, IN_RANGE, OUT_OF_RANGE, UNKNOWN = "verified", "in range", "out of range", "unknown"

_VERSION = re.compile(r"\s*v?(\d+(?:\.\d+)*)(.*)", re.S)
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", re.S)
_SPECIFIER = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(\S+)\s*")
_COMPARE: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}

Specifier = tuple[str, tuple[int, ...]]  # ("<", (0, 34))


def release(version: str) -> tuple[tuple[int, ...], str] | None:
    """(release tuple without trailing zeros, suffix without its local label), or None when the
    string starts with no number: "0.32.0+cpu" -> ((0, 32), ""), "0.5.23.post1" -> ((0, 5, 23),
    ".post1"), "0.33.0rc1" -> ((0, 33), "rc1")."""
    m = _VERSION.fullmatch(version)
    if m is None:
        return None
    parts = tuple(int(p) for p in m.group(1).split("."))
    while len(parts) > 1 and parts[-1] == 0:
        parts = parts[:-1]
    return parts, m.group(2).split("+", 1)[0].strip()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(text: str) -> tuple[str, list[Specifier]]:
    """"vllm >= 0.32, < 0.34" -> ("vllm", [(">=", (0, 32)), ("<", (0, 34))]). Raises ValueError."""
    m = _REQUIREMENT.fullmatch(text)
    if m is None:
        raise ValueError(f"cannot parse the requirement {text!r}")
    specs: list[Specifier] = []
    for part in m.group(2).split(",") if m.group(2).strip() else ():
        s = _SPECIFIER.fullmatch(part)
        found = release(s.group(2)) if s is not None else None
        if s is None or found is None:
            raise ValueError(f"cannot parse {part.strip()!r} in the requirement {text!r}")
        specs.append((s.group(1), found[0]))
    return _canonical(m.group(1)), specs


def check_version(version: str | None, requirements: Sequence[str], distribution: str | None = None) -> str:
    """The verdict for ``version`` against ``requirements``, alternatives (any one satisfied is
    enough), e.g. ``("vllm == 0.32.0", "vllm >= 0.32, < 0.34")``.

    Only the requirements naming ``distribution`` count, or all of them when it is None or none
    names it. Versions compare as release tuples (0.32 == 0.32.0); a pre-, post- or dev-release
    suffix is ignored by the comparison, but keeps a pinned version from being VERIFIED (so
    0.33.0rc1 is IN_RANGE of ">= 0.32, < 0.34"); a local label is ignored altogether. Returns
    VERIFIED, IN_RANGE, OUT_OF_RANGE or UNKNOWN. Raises ValueError for a requirement it cannot
    parse (operators: ==, !=, >=, <=, >, <)."""
    parsed = [_parse(text) for text in requirements]
    if distribution is not None and any(name == _canonical(distribution) for name, _ in parsed):
        parsed = [(name, specs) for name, specs in parsed if name == _canonical(distribution)]
    found = release(version) if version else None
    if found is None:
        return UNKNOWN
    ours, suffix = found
    holding = [specs for _name, specs in parsed if all(_COMPARE[op](ours, want) for op, want in specs)]
    if not suffix and any(specs and all(op == "==" for op, _ in specs) for specs in holding):
        return VERIFIED
    return IN_RANGE if holding else OUT_OF_RANGE
