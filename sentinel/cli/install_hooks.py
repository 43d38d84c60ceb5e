"""`sentinel install-hooks DEST`: copy the hooks package where an init container puts it (a volume
the serving container mounts), byte-compiled, never writable by the group or others."""

from __future__ import annotations

import argparse
import os

from sentinel.cli.options import CommandError

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "install-hooks"
HELP = "copy the hooks package to DEST (for an init container)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel install-hooks`."""
    p.add_argument("dest", help="destination folder, e.g. a shared volume")


def run(args: argparse.Namespace) -> int:
    """Run `sentinel install-hooks`: copy and byte-compile the hooks into DEST; returns 0. An OSError
    (DEST not writable) is not turned into a CommandError: it propagates."""
    from sentinel.injection import code_umask, compile_tree, install_hooks

    try:
        with code_umask():
            root = install_hooks(os.path.abspath(args.dest))
            compile_tree(root)
    except OSError as exc:
        raise CommandError(f"cannot install the hooks in {args.dest}: {exc}") from None
    print(f"hooks installed in {root}; put on PYTHONPATH: {os.path.join(root, 'sentinel_hooks', '_inject')}:{root}")
    return 0
