"""Acceptance 5 (the issue's "Done when"): a process run under `sentinel run` that steps 1000
times and SIGKILLs itself shows as dead at step 1000, in `sentinel status` and in /metrics."""

from __future__ import annotations

import signal

SNIPPET = r"""
import os, signal, sentinel_hooks
for _ in range(1000):
    sentinel_hooks.step()
print("pid", os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
print("not reached")
"""


def test_sigkilled_process_dead_at_step_1000_in_status_and_metrics(h):
    daemon = h.daemon()
    res = h.sentinel_run(SNIPPET)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert "not reached" not in res.stdout
    pid = int(res.stdout.split()[1])  # `sentinel run` execs: the command keeps the pid

    rows = h.status_json()
    assert len(rows) == 1
    row = rows[0]
    assert row["pid"] == pid
    assert row["alive"] is False
    assert row["exit"] == "died"
    assert row["step"] == 1000
    assert row["records"] == 1001  # START mark + 1000 steps, no EXIT mark
    assert row["ring"].startswith(f"{row['host']}.{pid}.")

    table = h.run([h.sentinel, "status", "--dir", h.dir], env=h.env())
    assert table.returncode == 0
    line = next(ln for ln in table.stdout.splitlines() if f" {pid} " in f" {ln} ")
    assert "no (died)" in line and " 1000 " in f" {line} "

    def dead_at_1000():
        text = daemon.scrape()
        step = h.samples(text, "sentinel_process_step", pid=str(pid))
        alive = h.samples(text, "sentinel_process_alive", pid=str(pid))
        return (text if [v for _, v in step] == [1000.0] and [v for _, v in alive] == [0.0] else None)

    text = h.wait_for(dead_at_1000, timeout=15, what="the daemon to report the process dead at step 1000")
    assert h.samples(text, "sentinel_processes", state="died") == [({"state": "died"}, 1.0)]
    assert [v for _, v in h.samples(text, "sentinel_ring_records_total", pid=str(pid), kind="step")] == [1000.0]

    # The daemon's journal now also backs `sentinel status` (same answer).
    def journaled_dead_at_1000() -> bool:
        (row,) = h.status_json()  # one `sentinel status` run (a CLI start-up) per look
        return row["step"] == 1000 and not row["alive"]

    h.wait_for(journaled_dead_at_1000, timeout=60, what="status after the daemon saw it")
