"""The `sentinel` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator

from sentinel import __version__
from sentinel_hooks import ringformat as rf

log = logging.getLogger("sentinel.cli")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


def finite_float(minimum: float, inclusive: bool = False):
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
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def cmd_daemon(args: argparse.Namespace) -> int:
    from sentinel import logjson
    from sentinel.daemon.loop import Daemon, DaemonConfig
    from sentinel.exporter.collectors import build_registry, serve

    web = None
    if args.web_config:
        from sentinel.exporter.webconfig import WebConfigError, load

        try:
            web = load(args.web_config)
        except WebConfigError as exc:
            print(f"sentinel daemon: --web-config {args.web_config}: {exc}", file=sys.stderr)
            return 2
    group = None
    if args.group:
        from sentinel_hooks.writer import resolve_group

        try:
            group = resolve_group(args.group)
        except ValueError as exc:
            print(f"sentinel daemon: --group: {exc}", file=sys.stderr)
            return 2
    logjson.setup(args.log_level)
    allowed = None if args.any_owner else {os.getuid(), *args.allow_uid}
    from sentinel.triage.catalog import CatalogError
    from sentinel.triage.hangs import HangConfig

    try:
        daemon = Daemon(DaemonConfig(
            base_dir=os.path.abspath(args.dir), poll_interval=args.poll_interval,
            rescan_interval=args.rescan_interval, allowed_uids=allowed,
            hang=HangConfig(floor_s=args.hang_floor, multiplier=args.hang_multiplier),
            cuda_gdb=args.cuda_gdb, gdb_timeout_s=args.gdb_timeout, cores_max_bytes=int(args.cores_max_mb * 2**20),
            cores_per_signature=args.cores_per_signature, catalogs=args.catalog, nvml=not args.no_nvml,
            group=group, consequence_window_s=args.consequence_window, dead_ttl_s=args.dead_ttl,
            crash_grace_s=args.crash_grace, pod_resources_socket=args.pod_resources_socket,
        ))
    except (CatalogError, OSError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 2
    host, port = args.listen
    try:
        server, _thread = serve(build_registry(lambda: daemon.snapshot), host, port, web, lambda: daemon.snapshot)
    except OSError as exc:
        log.error("cannot listen", extra={"listen": f"{host}:{port}", "error": str(exc)})
        daemon.close()
        return 2
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # No logging here: a signal that lands while the main thread writes a log line would make
        # this write reentrant, raise, and lose the stop. The line is written once the loop ends.
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("daemon started", extra={
        "dir": daemon.config.base_dir, "metrics": f"{web.scheme if web else 'http'}://{host}:{server.server_port}/metrics",
        "basic_auth": bool(web and web.users), "group": group, "version": __version__,
    })
    try:
        daemon.run(stop)
    finally:
        if received:
            log.info("stopping", extra={"signal": signal.Signals(received[0]).name})
        daemon.close()
        server.shutdown()
        log.info("daemon stopped", extra={"ingested": daemon.rings.ingested})
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("sentinel run: give a command after --, e.g. sentinel run -- python serve.py", file=sys.stderr)
        return 2
    exe = shutil.which(cmd[0])
    if exe is None:
        print(f"sentinel run: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    try:
        env = _hooked_env(args)
    except (OSError, ValueError) as exc:
        # The command runs all the same, as it would without Sentinel: one line says why unobserved.
        print(f"sentinel: running {cmd[0]} without hooks: cannot prepare {args.dir} ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        env = dict(os.environ)
    os.execve(exe, cmd, env)
    return 0  # not reached


def _hooked_env(args: argparse.Namespace) -> dict[str, str]:
    from sentinel.injection import injected_env, prepare
    from sentinel_hooks.writer import FsPolicy

    # The folders the hooked processes and the daemon share get SENTINEL_GROUP's modes and group
    # (private by default) before injected_env finds them there.
    policy = FsPolicy.from_env()
    base = os.path.abspath(args.dir)
    for sub in ("", "fr") + (("cores",) if os.environ.get("SENTINEL_COREDUMP", "1") not in ("0", "") else ()):
        policy.make_dirs(os.path.join(base, sub))
    with _code_umask():
        env = injected_env(args.dir, eager=args.eager)
        _compile(prepare(base))
    return env


def _compile(root: str) -> None:
    """Byte-compile the hooks copy now, under _code_umask: otherwise the command's first Python
    process makes its __pycache__ folders, with whatever umask the command runs under."""
    import compileall

    compileall.compile_dir(root, quiet=2)


@contextlib.contextmanager
def _code_umask() -> Iterator[None]:
    """The hooks copy is code on the command's PYTHONPATH: never writable by the group or others,
    whatever the caller's umask (restored before the command runs)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def cmd_status(args: argparse.Namespace) -> int:
    from sentinel.cli.status import collect, open_hangs, render_hangs, render_table

    if not os.path.isdir(args.dir):
        print(f"sentinel status: no such directory: {args.dir}", file=sys.stderr)
        return 2
    if args.hangs:
        hangs = open_hangs(args.dir, include_resolved=True)
        print(json.dumps(hangs, indent=2) if args.json else (render_hangs(hangs, full=True) or "no hangs recorded"))
        return 0
    rows = collect(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        banner = render_hangs(open_hangs(args.dir))
        if banner:
            print(banner + "\n")
        print(render_table(rows))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """The last records of a hooked process's ring, read directly (no daemon needed); --follow
    prints new ones as they come until the process ends."""
    from sentinel.cli.status import find_rings, format_record
    from sentinel.daemon.ringreader import RingReader
    from sentinel.triage.records import render_records

    try:
        paths = find_rings(args.dir, args.pid, args.rank)
    except FileNotFoundError:
        print(f"sentinel tail: no rings in {args.dir} (is it the SENTINEL_DIR the server uses?)", file=sys.stderr)
        return 2
    if not paths:
        who = f"pid {args.pid}" if args.pid is not None else f"rank {args.rank}"
        print(f"sentinel tail: no ring of {who} in {rf.rings_dir(args.dir)}; `sentinel status` lists them",
              file=sys.stderr)
        return 1
    try:
        reader = RingReader(paths[0])
    except (rf.RingFormatError, OSError) as exc:
        print(f"sentinel tail: {paths[0]}: {exc}", file=sys.stderr)
        return 1
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
    except KeyboardInterrupt:
        return 130
    finally:
        reader.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.vllm:
        from sentinel.demo.vllm import run_vllm_demo

        return run_vllm_demo(args.vllm_python, args.dir)
    from sentinel.demo.run import run_demo

    return run_demo(duration=args.duration, base_dir=args.dir)


def cmd_triage(args: argparse.Namespace) -> int:
    from sentinel.daemon.journal import Journal, journal_path
    from sentinel.triage import catalog as catalog_mod
    from sentinel.triage import records as faults
    from sentinel.triage.readers import cudagdb

    try:
        cat = catalog_mod.load(args.catalog)
    except (catalog_mod.CatalogError, OSError) as exc:
        print(f"sentinel triage: {exc}", file=sys.stderr)
        return 2
    if args.fault is not None:
        path = journal_path(args.dir)
        if not os.path.exists(path):
            print(f"sentinel triage: no journal at {path}", file=sys.stderr)
            return 2
        j = Journal(path)
        try:
            d = j.fault(args.fault)
        finally:
            j.close()
        if d is None:
            print(f"sentinel triage: no fault {args.fault} in {path}", file=sys.stderr)
            return 1
        rec = faults.FaultRecord.from_dict(d)
    elif args.list:
        path = journal_path(args.dir)
        if not os.path.isdir(args.dir):
            print(f"sentinel triage: no such directory: {args.dir}", file=sys.stderr)
            return 2
        if not os.path.exists(path):
            print(f"sentinel triage: no journal at {path}: no daemon has run with --dir {args.dir}", file=sys.stderr)
            return 1
        j = Journal(path)
        try:
            rows = j.faults(limit=args.list)
        finally:
            j.close()
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no faults journaled in {args.dir}")
        else:
            print(faults.render_list(rows))
        return 0
    else:
        if args.cuda_gdb_output:
            try:
                text = open(args.cuda_gdb_output, errors="replace").read()
            except OSError as exc:
                print(f"sentinel triage: {exc}", file=sys.stderr)
                return 2
            report, core, notes = cudagdb.parse(text), "", []
        elif args.core:
            if not os.path.isfile(args.core):
                print(f"sentinel triage: no such file: {args.core}", file=sys.stderr)
                return 2
            exe = cudagdb.find_cuda_gdb(args.cuda_gdb)
            if exe is None:
                print("sentinel triage: cuda-gdb not found (pass --cuda-gdb PATH); `sentinel doctor` explains",
                      file=sys.stderr)
                return 2
            try:
                text, _secs = cudagdb.run(args.core, exe, args.timeout)
            except Exception as exc:
                print(f"sentinel triage: cuda-gdb failed: {exc}", file=sys.stderr)
                return 1
            report, core, notes = cudagdb.parse(text), os.path.abspath(args.core), []
        else:
            print("sentinel triage: give a CORE file, --cuda-gdb-output FILE, --fault ID or --list", file=sys.stderr)
            return 2
        if not report.ok:
            notes.append("no CUDA exception or kernel found in the transcript: " + ("; ".join(report.errors) or
                         "is it a cuda-gdb transcript of a GPU coredump?"))
        rec = faults.from_core(report, core, None, lambda tag: "", args.dir, cat, notes)
        rec.source = "coredump" if core else "transcript"
    if args.json:
        print(json.dumps(rec.as_dict(), indent=2, default=str))
    else:
        print(faults.render_report(rec))
    return 0 if rec.exception_class != "unknown" else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from sentinel.cli.doctor import checks, render

    rows = checks(os.path.abspath(args.dir), args.cuda_gdb)
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 1 if any(r["status"] == "fail" for r in rows) else 0


def cmd_install_hooks(args: argparse.Namespace) -> int:
    from sentinel.injection import install_hooks

    with _code_umask():
        root = install_hooks(os.path.abspath(args.dest))
        _compile(root)
    print(f"hooks installed in {root}; put on PYTHONPATH: {os.path.join(root, 'sentinel_hooks', '_inject')}:{root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sentinel",
        description="CUDA-fault observability for LLM serving: hooks in the serving process, a sidecar daemon, "
        "Prometheus metrics.",
    )
    p.add_argument("--version", action="version", version=f"sentinel {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    # Resolved after parsing (main): finding the temp dir needs a writable one, which a read-only
    # container may lack even when --dir is given.
    default_dir = None

    d = sub.add_parser("daemon", help="run the sidecar daemon: tail rings, keep state, serve /metrics")
    d.add_argument("--dir", default=default_dir, help=f"SENTINEL_DIR to watch (default: {DIR_DEFAULT})")
    d.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9464),
                   help="HOST:PORT for /metrics (default: 127.0.0.1:9464)")
    d.add_argument("--poll-interval", type=finite_float(0), default=0.2, help="seconds between ring polls (default: 0.2)")
    d.add_argument("--rescan-interval", type=finite_float(0, inclusive=True), default=5.0,
                   help="seconds between directory rescans, the safety net for missed file events (default: 5)")
    d.add_argument("--allow-uid", type=int, action="append", default=[],
                   help="also accept rings owned by this uid (repeatable; default: only the daemon's own uid)")
    d.add_argument("--any-owner", action="store_true", help="accept rings owned by any user")
    d.add_argument("--group", default=os.environ.get("SENTINEL_GROUP") or None, metavar="NAME|GID",
                   help="share what the daemon creates with this group (setgid dirs 2770, files 0640), as the hooks "
                        "do with SENTINEL_GROUP (default: $SENTINEL_GROUP, else private: 0700 / 0600)")
    d.add_argument("--web-config", metavar="FILE", default=None,
                   help="TLS and basic auth for /metrics, in Prometheus's web-config format (tls_server_config, "
                        "basic_auth_users); see deploy/README.md")
    d.add_argument("--hang-floor", type=finite_float(0), default=5.0,
                   help="never call a collective hang sooner than this many seconds (default: 5)")
    d.add_argument("--hang-multiplier", type=finite_float(0), default=10.0,
                   help="hang threshold = max(floor, this x p99 collective/step time) (default: 10)")
    d.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to run on coredumps (default: from PATH / CUDA_HOME)")
    d.add_argument("--gdb-timeout", type=finite_float(0), default=60.0, help="seconds per cuda-gdb run (default: 60)")
    d.add_argument("--cores-max-mb", type=finite_float(0), default=2048, help="disk cap for kept coredumps (default: 2048)")
    d.add_argument("--cores-per-signature", type=positive_int, default=3,
                   help="coredumps kept per fault signature: the first, the latest and the rest (default: 3)")
    d.add_argument("--catalog", action="append", default=[], metavar="FILE",
                   help="extra known-issue catalog (TOML; repeatable). DIR/catalog.toml is read too")
    d.add_argument("--crash-grace", type=finite_float(0, inclusive=True), default=2.0, metavar="SECONDS",
                   help="how long after a process died its GPU coredump may still show up before its fault record is "
                        "made without one (default: 2)")
    d.add_argument("--dead-ttl", type=finite_float(0), default=600.0, metavar="SECONDS",
                   help="how long a dead process's series, and a fault's sentinel_fault_info, stay exported; alerts "
                        "on them resolve after it. Keep it above two scrape intervals, or a fault may never be "
                        "scraped (default: 600)")
    d.add_argument("--consequence-window", type=finite_float(0, inclusive=True), default=30.0, metavar="SECONDS",
                   help="a death this close to a related process's stronger fault is journaled as its consequence, "
                        "not paged on its own; 0 turns it off (default: 30)")
    d.add_argument("--no-nvml", action="store_true", help="do not use NVML (XID events, GPU utilisation)")
    d.add_argument("--pod-resources-socket", metavar="PATH", default=None,
                   help="node mode: attribute each GPU's XIDs to the pods holding it, from the kubelet's pod-resources "
                        "API at PATH (/var/lib/kubelet/pod-resources/kubelet.sock; needs sentinel-gpu[node])")
    d.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    d.set_defaults(func=cmd_daemon)

    r = sub.add_parser("run", help="run a command with the hooks injected (no code change)",
                       usage="sentinel run [--dir DIR] [--eager] -- CMD [ARGS...]")
    r.add_argument("--dir", default=default_dir, help=f"SENTINEL_DIR for the rings (default: {DIR_DEFAULT})")
    r.add_argument("--eager", action="store_true",
                   help="create each Python process's ring at start-up, not at its first hook call")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="list hooked processes: rank, pid, alive, step, heartbeat, records, drops")
    s.add_argument("--dir", default=default_dir, help=f"SENTINEL_DIR (default: {DIR_DEFAULT})")
    s.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    s.add_argument("--hangs", action="store_true", help="show recorded collective hangs with their stacks")
    s.set_defaults(func=cmd_status)

    tl = sub.add_parser("tail", help="print a hooked process's last ring records (no daemon needed); --follow for new ones",
                        usage="sentinel tail (--pid PID | --rank RANK) [-n N] [--follow] [--dir DIR]")
    who = tl.add_mutually_exclusive_group(required=True)
    who.add_argument("--pid", type=int, help="the process's pid (as `sentinel status` shows it)")
    who.add_argument("--rank", type=int, help="the newest ring of this rank")
    tl.add_argument("-n", "--lines", type=positive_int, default=20, help="records to print (default: 20)")
    tl.add_argument("-f", "--follow", action="store_true", help="then print new records until the process ends")
    tl.add_argument("--dir", default=default_dir, help=f"SENTINEL_DIR (default: {DIR_DEFAULT})")
    tl.set_defaults(func=cmd_tail)

    m = sub.add_parser("demo", help="run the built-in demo on this machine (CPU is enough), then summarise")
    m.add_argument("--duration", type=finite_float(0), default=20.0, help="seconds of workload (default: 20)")
    m.add_argument("--dir", default=None, help="use this SENTINEL_DIR instead of a fresh temp dir")
    m.add_argument("--vllm", action="store_true",
                   help="instead: a real vLLM engine on CPU under `sentinel run` (needs `make vllm-env`)")
    m.add_argument("--vllm-python", default=None, help="the vLLM environment's python (default: the cached one)")
    m.set_defaults(func=cmd_demo)

    t = sub.add_parser("triage", help="explain a fault: a GPU coredump, a saved cuda-gdb transcript, or a journaled fault",
                       usage="sentinel triage [CORE | --cuda-gdb-output FILE | --fault ID | --list [N]] [--json]")
    t.add_argument("core", nargs="?", help="a GPU coredump (.nvcudmp) to read with cuda-gdb")
    t.add_argument("--cuda-gdb-output", metavar="FILE", help="a saved cuda-gdb transcript")
    t.add_argument("--fault", type=int, metavar="ID", help="a fault from the journal under --dir")
    t.add_argument("--list", type=int, nargs="?", const=20, metavar="N", help="list the last N journaled faults")
    t.add_argument("--dir", default=default_dir, help=f"SENTINEL_DIR with the journal (default: {DIR_DEFAULT})")
    t.add_argument("--catalog", action="append", default=[], metavar="FILE", help="extra known-issue catalog")
    t.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to run")
    t.add_argument("--timeout", type=finite_float(0), default=60.0, help="cuda-gdb timeout in seconds")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(func=cmd_triage)

    o = sub.add_parser("doctor", help="check cuda-gdb, ptrace, the coredump environment, NVML and SENTINEL_DIR")
    o.add_argument("--dir", default=default_dir, help=f"SENTINEL_DIR (default: {DIR_DEFAULT})")
    o.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to check")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_doctor)

    i = sub.add_parser("install-hooks", help="copy the hooks package to DEST (for an init container)")
    i.add_argument("dest", help="destination folder, e.g. a shared volume")
    i.set_defaults(func=cmd_install_hooks)
    return p


DIR_DEFAULT = "$SENTINEL_DIR, else $XDG_RUNTIME_DIR/sentinel-UID or TMPDIR/sentinel-UID"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "dir", "") is None and args.func is not cmd_demo:  # the demo makes a fresh one
        args.dir = rf.default_dir()
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
        return rc
    except BrokenPipeError:
        # `sentinel status | head`: the reader left; say nothing more (and let the interpreter's
        # final flush of stdout go nowhere).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
