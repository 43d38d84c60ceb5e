"""The ``sentinel`` command line: one parser built from the subcommand modules, one error funnel.

Each subcommand is a module of this package with ``NAME``, ``HELP``, optionally ``USAGE``,
``add_arguments(parser)`` and ``run(args) -> exit status``. A subcommand reports a failure by
raising ``CommandError``; ``main`` prints it as ``sentinel NAME: message`` and returns its code.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from sentinel import __version__
from sentinel.cli import daemon, demo, doctor, install_hooks, run, status, tail, triage
from sentinel.cli.options import CommandError
from sentinel_hooks import layout

__all__ = ["COMMANDS", "build_parser", "main"]

# In the order `sentinel --help` lists them; adding a subcommand is one entry here.
COMMANDS: tuple[ModuleType, ...] = (daemon, run, status, tail, demo, triage, doctor, install_hooks)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``args.command`` (its module)."""
    p = argparse.ArgumentParser(
        prog="sentinel",
        description="CUDA-fault observability for LLM serving: hooks in the serving process, a sidecar daemon, "
        "Prometheus metrics.",
    )
    p.add_argument("--version", action="version", version=f"sentinel {__version__}")
    sub = p.add_subparsers(dest="name", metavar="COMMAND")
    for module in COMMANDS:
        s = sub.add_parser(module.NAME, help=module.HELP, usage=getattr(module, "USAGE", None))
        module.add_arguments(s)
        s.set_defaults(command=module)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return its exit status: the
    subcommand's own, 2 for bad usage, 130 on Ctrl-C, 141 when stdout's reader has gone."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    if getattr(args, "dir", "") is None and not getattr(command, "FRESH_DIR", False):
        args.dir = layout.default_dir()
    try:
        rc = int(command.run(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return rc
    except CommandError as exc:
        print(f"sentinel {command.NAME}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `sentinel status | head`: the reader left; say nothing more (and let the interpreter's
        # final flush of stdout go nowhere).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
