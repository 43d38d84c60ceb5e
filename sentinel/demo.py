"""`sentinel demo`: the daemon and a real hooked PyTorch workload, live, on this machine.

Three "ranks" of a tiny paged-KV decode loop run under `sentinel run`. One is SIGKILLed halfway
(as an OOM kill or a fatal fault would), and the daemon shows it while it happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from . import logjson
from .daemon import Daemon, DaemonConfig
from .exporter import build_registry, serve
from .injection import injected_env
from .status import collect, render_table

WORLD = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _line(daemon: Daemon, t: float) -> str:
    parts = []
    procs = sorted(daemon.snapshot.processes, key=lambda p: p.identity.get("rank", 0))
    for p in procs:
        rank = p.identity.get("rank")
        if p.alive:
            parts.append(f"rank {rank}: step {p.step:5d}  alive")
        else:
            parts.append(f"rank {rank}: step {p.step:5d}  {p.exit.upper()}")
    return f"  t={t:4.1f}s  " + " | ".join(parts) if parts else f"  t={t:4.1f}s  (waiting for rings)"


def run_demo(duration: float = 20.0, base_dir: str | None = None) -> int:
    base = os.path.abspath(base_dir or tempfile.mkdtemp(prefix="sentinel-demo-"))
    os.makedirs(base, mode=0o700, exist_ok=True)
    port = _free_port()
    logjson.setup("info", open(os.path.join(base, "daemon.log"), "a"))  # keep the live view readable
    daemon = Daemon(DaemonConfig(base_dir=base, poll_interval=0.1))
    server, _ = serve(build_registry(lambda: daemon.snapshot), "127.0.0.1", port)
    stop = threading.Event()
    poller = threading.Thread(target=daemon.run, args=(stop,), name="sentinel-daemon", daemon=True)
    poller.start()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    print("Sentinel demo")
    print(f"  SENTINEL_DIR  {base}")
    print(f"  metrics       {metrics_url}")
    print(f"  workload      {WORLD} ranks of a paged-KV decode loop (PyTorch, CPU), hooked by `sentinel run`")
    print(f"                rank {WORLD - 1} is SIGKILLed after {duration / 2:.0f}s\n")

    procs = []
    env = injected_env(base)
    for rank in range(WORLD):
        e = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), SENTINEL_JOB="demo")
        cmd = [sys.executable, "-m", "sentinel.demo_workload", "--duration", str(duration)]
        if rank == WORLD - 1:
            cmd += ["--die-after", str(duration / 2)]
        procs.append(subprocess.Popen(cmd, env=e))

    t0 = time.monotonic()
    deadline = t0 + duration + 30
    try:
        while time.monotonic() < deadline:
            time.sleep(1.0)
            print(_line(daemon, time.monotonic() - t0), flush=True)
            if all(p.poll() is not None for p in procs):
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        time.sleep(0.3)  # let the daemon take its last poll of the final records
        stop.set()
        poller.join(timeout=5)
        try:
            metrics = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
        except OSError as exc:
            metrics = f"(scrape failed: {exc})"
        daemon.close()
        server.shutdown()

    print("\nWhat the daemon exported (a few of the series):")
    for line in metrics.splitlines():
        if line.startswith(("sentinel_process_alive", "sentinel_process_step{", "sentinel_processes")):
            print("  " + line)
    print("\n`sentinel status` now:")
    print("  " + render_table(collect(base)).replace("\n", "\n  "))
    died = [p for p in daemon.snapshot.processes if p.exit == "died"]
    print("\nSummary")
    print(f"  {len(daemon.snapshot.processes)} processes seen, {len(died)} died: "
          + ", ".join(f"rank {p.identity.get('rank')} at step {p.step}" for p in died))
    print(f"  records read: {daemon.ingested}; their last records stay in {os.path.join(base, 'rings')}")
    print("\nWhere to look next")
    print(f"  sentinel status --dir {base}")
    print(f"  sentinel daemon --dir {base} --listen 127.0.0.1:9464   # then curl 127.0.0.1:9464/metrics")
    print(f"  {os.path.join(base, 'daemon.log')}   (the daemon's JSON log)")
    return 0 if len(died) == 1 else 1
