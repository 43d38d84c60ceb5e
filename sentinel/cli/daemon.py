"""`sentinel daemon`: the sidecar. Tails the rings, keeps state, journals, serves /metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from sentinel import __version__
from sentinel.cli.options import CommandError, add_dir, finite_float, parse_listen, positive_int
from sentinel_hooks import env

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "daemon"
HELP = "run the sidecar daemon: tail rings, keep state, serve /metrics"
log = logging.getLogger("sentinel.cli")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel daemon`."""
    add_dir(p, "SENTINEL_DIR to watch")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9464),
                   help="HOST:PORT for /metrics (default: 127.0.0.1:9464)")
    p.add_argument("--poll-interval", type=finite_float(0), default=0.2, help="seconds between ring polls (default: 0.2)")
    p.add_argument("--rescan-interval", type=finite_float(0, inclusive=True), default=5.0,
                   help="seconds between directory rescans, the safety net for missed file events (default: 5)")
    p.add_argument("--allow-uid", type=int, action="append", default=[],
                   help="also accept rings owned by this uid (repeatable; default: only the daemon's own uid)")
    p.add_argument("--any-owner", action="store_true", help="accept rings owned by any user")
    p.add_argument("--group", default=env.read(env.GROUP), metavar="NAME|GID",
                   help="share what the daemon creates with this group (setgid dirs 2770, files 0640), as the hooks "
                        "do with SENTINEL_GROUP (default: $SENTINEL_GROUP, else private: 0700 / 0600)")
    p.add_argument("--web-config", metavar="FILE", default=None,
                   help="TLS and basic auth for /metrics, in Prometheus's web-config format (tls_server_config, "
                        "basic_auth_users); see deploy/README.md")
    p.add_argument("--hang-floor", type=finite_float(0), default=5.0,
                   help="never call a collective hang sooner than this many seconds (default: 5)")
    p.add_argument("--hang-multiplier", type=finite_float(0), default=10.0,
                   help="hang threshold = max(floor, this x p99 collective/step time) (default: 10)")
    p.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to run on coredumps (default: from PATH / CUDA_HOME)")
    p.add_argument("--gdb-timeout", type=finite_float(0), default=60.0, help="seconds per cuda-gdb run (default: 60)")
    p.add_argument("--cores-max-mb", type=finite_float(0), default=2048, help="disk cap for kept coredumps, in MiB (default: 2048)")
    p.add_argument("--cores-per-signature", type=positive_int, default=3,
                   help="coredumps kept per fault signature: the first, the latest and the rest (default: 3)")
    p.add_argument("--catalog", action="append", default=[], metavar="FILE",
                   help="extra known-issue catalog (TOML; repeatable). DIR/catalog.toml is read too")
    p.add_argument("--crash-grace", type=finite_float(0, inclusive=True), default=2.0, metavar="SECONDS",
                   help="how long after a process died its GPU coredump may still show up before its fault record is "
                        "made without one (default: 2)")
    p.add_argument("--dead-ttl", type=finite_float(0), default=600.0, metavar="SECONDS",
                   help="how long a dead process's series, and a fault's sentinel_fault_info, stay exported; alerts "
                        "on them resolve after it. Keep it above two scrape intervals, or a fault may never be "
                        "scraped (default: 600)")
    p.add_argument("--consequence-window", type=finite_float(0, inclusive=True), default=30.0, metavar="SECONDS",
                   help="a death this close to a related process's stronger fault is journaled as its consequence, "
                        "not paged on its own; 0 turns it off (default: 30)")
    p.add_argument("--no-nvml", action="store_true", help="do not use NVML (XID events, GPU utilisation)")
    p.add_argument("--pod-resources-socket", metavar="PATH", default=None,
                   help="node mode: attribute each GPU's XIDs to the pods holding it, from the kubelet's pod-resources "
                        "API at PATH (/var/lib/kubelet/pod-resources/kubelet.sock; needs sentinel-gpu[node])")
    p.add_argument("--log-file", action="append", default=[], metavar="GLOB",
                   help="follow serving logs matching GLOB (repeatable), e.g. a node's container logs "
                        "'/var/log/pods/*/*/*.log': a CUDA error, device assert or engine death written there becomes "
                        "a fault record at once. DIR/logs/ (`sentinel run --log-tap`) is always followed")
    p.add_argument("--kmsg", default="/dev/kmsg", metavar="PATH",
                   help="follow the kernel log for NVIDIA Xid lines: /dev/kmsg (needs CAP_SYSLOG where "
                        "kernel.dmesg_restrict=1; without it, XIDs come from NVML only) or a file in its format; "
                        "'off' to not (default: /dev/kmsg)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    """Run `sentinel daemon` until SIGTERM or SIGINT; returns 0, or 2 (a JSON log line says why) when
    the journal, a catalog, the folder or the --listen address cannot be used. Raises CommandError
    (exit 2) for a bad --web-config or --group."""
    from sentinel import logjson
    from sentinel.daemon.loop import Daemon, DaemonConfig
    from sentinel.exporter.collectors import build_registry
    from sentinel.exporter.server import serve

    web = None
    if args.web_config:
        from sentinel.exporter.webconfig import WebConfigError, load

        try:
            web = load(args.web_config)
        except WebConfigError as exc:
            raise CommandError(f"--web-config {args.web_config}: {exc}") from None
    group = None
    if args.group:
        from sentinel_hooks.writer import resolve_group

        try:
            group = resolve_group(args.group)
        except ValueError as exc:
            raise CommandError(f"--group: {exc}") from None
    logjson.setup(args.log_level)
    allowed = None if args.any_owner else {os.getuid(), *args.allow_uid}
    from sentinel.daemon.journal import JournalError
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
            log_files=args.log_file, kmsg="" if args.kmsg == "off" else args.kmsg,
        ))
    except (CatalogError, JournalError, OSError) as exc:
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
