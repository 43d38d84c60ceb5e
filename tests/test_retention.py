"""Dead processes are forgotten after --dead-ttl: their series end (so alerts on them resolve, also
when a Kubernetes sidecar outlives the server it watched), their fault's sentinel_fault_info ends,
and their ring and faulthandler files are deleted. The journal keeps their rows and fault records."""

from __future__ import annotations

import os
from pathlib import Path

CRASH = "import ctypes, sentinel_hooks as sh\nsh.step()\nctypes.string_at(0)\n"
CLEAN = "import sentinel_hooks as sh\nsh.step()\n"


def _pids(samples: list[tuple[dict, float]]) -> set[int]:
    return {int(lab["pid"]) for lab, _ in samples}


def test_dead_processes_expire_and_their_rings_are_deleted(h):
    ttl = 3.0
    daemon = h.daemon(args=("--dead-ttl", str(ttl), "--no-nvml"))
    crash = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", CRASH], env=h.env())
    clean = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", CLEAN], env=h.env())
    assert crash.wait(timeout=60) == -11 and clean.wait(timeout=60) == 0
    fh = Path(h.dir) / "faults"

    def recorded():
        text = daemon.scrape()
        ok = (_pids(h.samples(text, "sentinel_fault_info", kind="crash")) == {crash.pid}
              and _pids(h.samples(text, "sentinel_process_alive")) == {crash.pid, clean.pid})
        return text if ok else None

    text = h.wait_for(recorded, timeout=60, what="the crash's fault record and both processes on /metrics")
    assert h.samples(text, "sentinel_processes", state="died") == [({"state": "died"}, 1.0)]
    assert len(h.rings()) == 2 and [p.name for p in fh.iterdir()] == [f"faulthandler_{os.uname().nodename}_{crash.pid}.log"]

    def forgotten():
        text = daemon.scrape()
        gone = not (h.samples(text, "sentinel_process_alive") or h.samples(text, "sentinel_fault_info") or h.rings())
        return text if gone else None

    # The fault's info (which the alert fires from) expires too, so the alert resolves.
    text = h.wait_for(forgotten, timeout=60, what=f"both processes and the fault forgotten after --dead-ttl {ttl}")
    assert [v for _, v in h.samples(text, "sentinel_faults_total")] == [1.0]  # the history stays
    assert [v for _, v in h.samples(text, "sentinel_rings_deleted_total")] == [2.0]
    assert [v for _, v in h.samples(text, "sentinel_ring_delete_errors_total")] == [0.0]
    assert list(fh.iterdir()) == []
    # The journal keeps both processes and the fault; `sentinel triage` still shows it.
    listing = h.run([h.sentinel, "triage", "--dir", h.dir, "--list", "--json"], env=h.env())
    assert [r["identity"]["pid"] for r in __import__("json").loads(listing.stdout)] == [crash.pid]
    assert {r["pid"] for r in h.status_json()} == {crash.pid, clean.pid}
