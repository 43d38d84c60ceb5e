"""What the subcommands share: option types, the options several of them take (``--dir``,
``--json``), and ``CommandError``, the one way a subcommand reports a failure to ``main``."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["CommandError", "add_dir", "add_json", "finite_float", "parse_listen", "positive_int", "DIR_DEFAULT"]

DIR_DEFAULT = "$SENTINEL_DIR, else $XDG_RUNTIME_DIR/sentinel-UID or TMPDIR/sentinel-UID"


class CommandError(Exception):
    """A subcommand cannot do what was asked: ``main`` prints ``sentinel COMMAND: message`` on stderr
    and exits with ``code`` (2: bad usage or environment; 1: nothing found or the work failed)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (an empty host listens on every address; IPv6 in brackets) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


def finite_float(minimum: float, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float above ``minimum`` (or at it, when ``inclusive``)."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(x) or x < minimum or (x == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if inclusive else '>'} {minimum:g}, "
                                             f"got {value!r}")
        return x
    return parse


def positive_int(value: str) -> int:
    """An argparse type: an integer >= 1."""
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def add_dir(p: argparse.ArgumentParser, what: str = "SENTINEL_DIR") -> None:
    """``--dir``. Its default is resolved after parsing (``main``): finding the temp dir needs a
    writable one, which a read-only container may lack even when --dir is given."""
    p.add_argument("--dir", default=None, help=f"{what} (default: {DIR_DEFAULT})")


def add_json(p: argparse.ArgumentParser, what: str = "print JSON") -> None:
    """``--json``: machine-readable output instead of the table or report."""
    p.add_argument("--json", action="store_true", help=what)
