"""`sentinel run -- CMD`: run a command with the hooks injected into its Python processes (no code
change), by exec: the command keeps the pid, the signals and the exit status.

With ``--log-tap``, `sentinel run` stays as the command's parent instead: it passes the command's
stdout and stderr through (``sentinel_hooks.logtap``, which never blocks the command) and copies them to
``SENTINEL_DIR/logs/<host>.<pid>.log`` for the daemon; it forwards the usual signals and exits with the
command's status (128 + N for a command killed by signal N)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from sentinel.cli.options import CommandError, add_dir

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "run"
HELP = "run a command with the hooks injected (no code change)"
USAGE = "sentinel run [--dir DIR] [--eager] [--log-tap] -- CMD [ARGS...]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel run`."""
    add_dir(p, "SENTINEL_DIR for the rings")
    p.add_argument("--eager", action="store_true",
                   help="create each Python process's ring at start-up, not at its first hook call")
    p.add_argument("--log-tap", action="store_true",
                   help="pass the command's stdout and stderr through, and copy them to DIR/logs/ for the daemon, "
                        "which turns a failure line (a CUDA error, a device assert) into a fault record at once")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")


def run(args: argparse.Namespace) -> int:
    """Run `sentinel run`: exec the command with the hooks injected, or without them (one line on
    stderr) when --dir cannot be prepared; does not return. Raises CommandError: exit 2 with no
    command, 127 when it is not on PATH; OSError when the exec fails."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CommandError("give a command after --, e.g. sentinel run -- python serve.py")
    exe = shutil.which(cmd[0])
    if exe is None:
        raise CommandError(f"command not found: {cmd[0]}", 127)
    try:
        env = _hooked_env(args)
    except (OSError, ValueError) as exc:
        # The command runs all the same, as it would without Sentinel: one line says why unobserved.
        print(f"sentinel: running {cmd[0]} without hooks: cannot prepare {args.dir} ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        env = dict(os.environ)
    if args.log_tap:
        return _run_tapped(exe, cmd, env, args.dir)
    try:
        os.execve(exe, cmd, env)
    except OSError as exc:  # not executable, a bad interpreter line: as a shell says it
        raise CommandError(f"cannot run {cmd[0]}: {exc}", 126) from None
    return 0  # not reached


def _hooked_env(args: argparse.Namespace) -> dict[str, str]:
    from sentinel.injection import code_umask, compile_tree, injected_env, prepare
    from sentinel_hooks import env, layout
    from sentinel_hooks.writer import FsPolicy

    # The folders the hooked processes and the daemon share get SENTINEL_GROUP's modes and group
    # (private by default) before injected_env finds them there.
    policy = FsPolicy.from_env()
    base = os.path.abspath(args.dir)
    for folder in (base, layout.fr_dir(base)) + ((layout.cores_dir(base),) if env.read(env.COREDUMP) else ()):
        policy.make_dirs(folder)
    with code_umask():
        env = injected_env(args.dir, eager=args.eager)
        compile_tree(prepare(base))
    return env


def _run_tapped(exe: str, cmd: list[str], env: dict[str, str], base_dir: str) -> int:
    """Run the command as our child with its output tapped (``sentinel_hooks.logtap``); returns its
    exit status."""
    from sentinel_hooks import logtap

    try:
        return logtap.run([exe, *cmd[1:]], env, base_dir)
    except OSError as exc:
        raise CommandError(f"cannot run {cmd[0]}: {exc}", 126) from None
