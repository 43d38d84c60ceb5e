"""Acceptance 6: `promtool check metrics` finds no problems in the daemon's /metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

WORKLOAD = r"""
import sentinel_hooks
for i in range(50):
    sentinel_hooks.step()
    sentinel_hooks.event(3, a=i, name="tick")
sentinel_hooks.event(1, a=2**70)   # a counted drop
"""


def test_promtool_check_metrics_clean(h, promtool_path):
    promtool = promtool_path
    # Rich output: a live process, a crashed one, a cleanly exited one, a rejected file.
    rings = Path(h.dir) / "rings"
    rings.mkdir(parents=True)
    (rings / "junk.ring").write_bytes(b"not a ring at all" * 300)
    stop = h.scratch / "stop"
    live = h.spawn([h.python, str(h.helpers / "stepper.py"), str(stop), "0.005", "60"], env=h.hooked_env(RANK="0"))
    assert h.sentinel_run(WORKLOAD).returncode == 0
    assert h.sentinel_run("import os, signal, sentinel_hooks\nsentinel_hooks.step()\nos.kill(os.getpid(), signal.SIGKILL)"
                          ).returncode != 0
    daemon = h.daemon()

    def rich():
        text = daemon.scrape()
        states = {lab["state"]: v for lab, v in h.samples(text, "sentinel_processes")}
        ok = (states.get("running") == 1 and states.get("exited") == 1 and states.get("died") == 1
              and h.samples(text, "sentinel_process_step_duration_p99_seconds")
              and h.samples(text, "sentinel_rings_rejected_total"))
        return text if ok else None

    text = h.wait_for(rich, timeout=15, what="metrics for live, exited, died and rejected rings")
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", (
        f"promtool rc={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    )
    stop.touch()
    assert live.wait(timeout=20) == 0
