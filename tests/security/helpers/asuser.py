"""Run a command as another uid/gid (called as root), optionally in a private mount namespace with
bind mounts: read-only ones make a read-only SENTINEL_DIR; others expose an interpreter that lives
under a folder other users cannot enter.

usage: asuser.py --uid U --gid G [--groups G1,G2] [--umask 022] [--bind SRC:DST[:ro]]... [--env K=V]...
                 -- CMD [ARGS...]
"""

import argparse
import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


def _mounts(binds: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def call(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    call(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private: the mounts below stay in this process tree and vanish with it.
    call(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    for spec in binds:
        src, dst, *opts = spec.split(":")
        call(libc.mount(src.encode(), dst.encode(), None, MS_BIND | MS_REC, None), f"bind {src} on {dst}")
        if opts == ["ro"]:
            call(libc.mount(b"none", dst.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None), f"remount {dst} ro")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    p.add_argument("--groups", default="")
    p.add_argument("--umask", default=None)
    p.add_argument("--bind", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.bind:
        _mounts(args.bind)
    os.setgroups([int(g) for g in args.groups.split(",") if g])
    os.setgid(args.gid)
    os.setuid(args.uid)  # last: drops root and its capabilities
    if args.umask is not None:
        os.umask(int(args.umask, 8))
    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    try:
        main()
    except OSError as exc:
        print(f"asuser: {exc}", file=sys.stderr)
        sys.exit(125)
