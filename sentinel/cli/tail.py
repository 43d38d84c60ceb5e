"""`sentinel tail`: a hooked process's last ring records, read directly (no daemon needed);
``--follow`` prints new ones as they come until the process ends."""

from __future__ import annotations

import argparse
import os
import time

from sentinel.cli.options import CommandError, add_dir, positive_int
from sentinel_hooks import layout
from sentinel_hooks import ringformat as rf

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "tail"
HELP = "print a hooked process's last ring records (no daemon needed); --follow for new ones"
USAGE = "sentinel tail (--pid PID | --rank RANK) [-n N] [--follow] [--dir DIR]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel tail`."""
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="the process's pid (as `sentinel status` shows it)")
    who.add_argument("--rank", type=int, help="the newest ring of this rank")
    p.add_argument("-n", "--lines", type=positive_int, default=20, help="records to print (default: 20)")
    p.add_argument("-f", "--follow", action="store_true", help="then print new records until the process ends")
    add_dir(p)


def run(args: argparse.Namespace) -> int:
    """Run `sentinel tail`; returns 0. Raises CommandError: exit 2 when there is no rings folder, exit 1
    for no ring of that pid or rank, or a ring that cannot be read."""
    from sentinel.cli.status import find_rings, format_record
    from sentinel.daemon.ringreader import RingReader
    from sentinel.triage.records import render_records

    try:
        paths = find_rings(args.dir, args.pid, args.rank)
    except FileNotFoundError:
        raise CommandError(f"no rings in {args.dir} (is it the SENTINEL_DIR the server uses?)") from None
    if not paths:
        who = f"pid {args.pid}" if args.pid is not None else f"rank {args.rank}"
        raise CommandError(f"no ring of {who} in {layout.rings_dir(args.dir)}; `sentinel status` lists them", 1)
    try:
        reader = RingReader(paths[0])
    except (rf.RingFormatError, OSError) as exc:
        raise CommandError(f"{paths[0]}: {exc}", 1) from None
    try:
        h, alive = reader.header, reader.writer_alive()
        top = reader.top_seq(full_scan=not alive)
        state = "alive" if alive else ("exited" if h["exit_ns"] else "died")
        rank = "-" if h["rank"] < 0 else h["rank"]
        print(f"# {os.path.basename(paths[0])}: pid {h['pid']} rank {rank} {h['framework']} {state}, "
              f"step {h['step']}, {top} records" + (f" ({len(paths) - 1} older rings of rank {args.rank})"
                                                   if len(paths) > 1 else ""))
        shown = reader.recent(top, args.lines)
        for d in render_records(shown, reader.name, limit=args.lines):
            print(format_record(d), flush=True)
        # Follow from the last record shown: one still being written at `top` comes with the next read.
        reader.last_seq = int(shown["seq"][-1]) if len(shown) else max(0, top - args.lines)
        while args.follow and alive:
            time.sleep(0.5)
            alive = reader.writer_alive()
            res = reader.tail(writer_alive=alive)
            for d in render_records(res.records, reader.name, limit=len(res.records)):
                print(format_record(d), flush=True)
            if not alive:
                print(f"# the process ended ({'exited' if reader.refresh_header()['exit_ns'] else 'died'})")
    finally:
        reader.close()
    return 0
