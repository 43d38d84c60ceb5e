"""Full disk: SENTINEL_DIR on a small real filesystem (a tmpfs) that fills up.

* Full before the ring is created: the hooks are counted no-ops and the serving process runs as it
  does without Sentinel (same stdout, same exit code): importing the hooks itself, under
  `sentinel run` with the hooks already installed there, and under `sentinel run` on a folder it
  cannot even prepare. The daemon runs on and reports the full disk (sentinel_dir_free_bytes).
* Full after the ring exists: the ring was allocated up front (posix_fallocate), so the hooks keep
  recording and the daemon keeps tracking to the last step. The daemon's own journal writes fail:
  counted (sentinel_journal_write_errors_total), never fatal, and caught up once space is back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

from chaos_support import HELPERS, Harness, Samples, by_pid, journal_integrity, journal_query, start_daemon

SERVE = str(HELPERS / "chaos_serve.py")
STEPS = 2000
FS_SIZE = 16 << 20


def _serve(h: Harness, env: dict[str, str], name: str, gate: str | None = None,
           sentinel_run: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the stand-in serving process (under `sentinel run --dir DIR` when given); returns (result, stats)."""
    stats = h.scratch / f"stats-{name}.json"
    argv = [h.python, SERVE, str(stats), str(STEPS)] + ([gate] if gate else [])
    if sentinel_run:
        argv = [h.sentinel, "run", "--dir", sentinel_run, "--", *argv]
    res = h.run(argv, env=env, timeout=60)
    return res, json.loads(stats.read_text())


def _baseline(h: Harness) -> subprocess.CompletedProcess:
    """Without Sentinel: the hooks switched off."""
    res, stats = _serve(h, h.env(SENTINEL_DISABLE="1"), "baseline")
    assert res.returncode == 3 and res.stdout.startswith("step 0 ") and res.stderr == ""
    assert stats["disabled_reason"] == "disabled"
    return res


def _gauge(parsed: Samples, name: str) -> float | None:
    values = [v for n, _lab, v in parsed if n == name]
    return values[0] if values else None


def test_disk_full_before_the_ring_is_created(small_fs, h):
    fs = small_fs(FS_SIZE)
    base, fresh = os.path.join(fs.path, "sentinel"), os.path.join(fs.path, "never-prepared")
    d = start_daemon(h, "--no-nvml", base_dir=base)
    baseline = _baseline(h)
    # `sentinel run` installs the hooks under DIR once (as an init container would); then the disk fills.
    res, stats = _serve(h, h.env(), "before", sentinel_run=base)
    assert res.returncode == 3 and res.stdout == baseline.stdout and stats["active"]
    h.wait_for(lambda: by_pid(h.parse_samples(d.scrape()), "sentinel_process_alive"), timeout=20,
               what="the daemon to see the process that ran before the fill")
    filled = fs.fill()
    assert fs.free_bytes() == 0
    h.wait_for(lambda: _gauge(h.parse_samples(d.scrape()), "sentinel_dir_free_bytes") == 0, timeout=20,
               what="the daemon to report the full disk")

    runs = {
        "direct": _serve(h, h.env(SENTINEL_DIR=base), "direct"),  # the program imports the hooks itself
        "sentinel run": _serve(h, h.env(), "run", sentinel_run=base),
        # A folder `sentinel run` cannot prepare on the full disk: it runs the command without hooks.
        "sentinel run, unprepared dir": _serve(h, h.env(SENTINEL_DIR=fresh), "fresh", sentinel_run=fresh),
    }
    for how, (res, stats) in runs.items():
        assert res.returncode == baseline.returncode, (how, res.stderr)
        assert res.stdout == baseline.stdout, how
        assert "Traceback" not in res.stderr, (how, res.stderr)
        assert not stats["active"] and stats["ring"] is None, (how, stats)
        assert stats["noops"] == 2 * STEPS and stats["steps"] == STEPS and stats["errors"] == 0, (how, stats)
        assert "No space left on device" in stats["disabled_reason"], (how, stats)
        hook_lines = [ln for ln in res.stderr.splitlines() if "hooks disabled" in ln]
        assert len(hook_lines) == 1, (how, res.stderr)  # said once, not once per call
    assert "without hooks" in runs["sentinel run, unprepared dir"][0].stderr
    # Nothing half-made left on the full disk: no ring, no temp file.
    assert os.listdir(os.path.join(base, "rings")) == [os.path.basename(str(h.rings(base)[0]))]

    m = h.parse_samples(d.scrape())
    assert d.proc.poll() is None
    assert _gauge(m, "sentinel_dir_free_bytes") == 0
    assert len(by_pid(m, "sentinel_process_alive")) == 1  # only the run from before the fill
    # Space back: the same command is observed again.
    fs.unfill()
    res, stats = _serve(h, h.env(), "after", sentinel_run=base)
    assert res.returncode == 3 and res.stdout == baseline.stdout and stats["active"]
    h.wait_for(lambda: len(by_pid(h.parse_samples(d.scrape()), "sentinel_process_alive")) == 2, timeout=20,
               what="the daemon to see the run after the disk was freed")
    assert _gauge(h.parse_samples(d.scrape()), "sentinel_dir_free_bytes") > 0
    print(f"full disk before the ring: tmpfs {FS_SIZE >> 20} MiB via {fs.how}, {filled} B of ballast; 3 runs with "
          f"{2 * STEPS} hook calls each, all counted no-ops; stdout and exit code {baseline.returncode} as without "
          "Sentinel; daemon alive, reported 0 free bytes")


def test_disk_fills_after_the_ring_exists(small_fs, h):
    fs = small_fs(FS_SIZE)
    base = os.path.join(fs.path, "sentinel")
    d = start_daemon(h, "--no-nvml", base_dir=base)
    baseline = _baseline(h)
    gate = h.scratch / "gate"
    proc = h.spawn([h.sentinel, "run", "--dir", base, "--", h.python, SERVE, str(h.scratch / "stats-fill.json"),
                    str(STEPS), str(gate)], env=h.env(SENTINEL_RING_CAPACITY="8192"))

    def at_gate():
        m = h.parse_samples(d.scrape())
        return [p for p, v in by_pid(m, "sentinel_process_step").items() if v == STEPS // 2]

    (pid,) = h.wait_for(at_gate, timeout=30, what="the serving process halfway, its ring in use")
    assert pid == str(proc.pid)
    filled = fs.fill()
    assert fs.free_bytes() == 0
    errors_at_fill = _gauge(h.parse_samples(d.scrape()), "sentinel_journal_write_errors_total")
    gate.touch()  # the second half of the steps, on the full disk
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == baseline.returncode and out.decode() == baseline.stdout
    assert err == b"", err.decode(errors="replace")
    stats = json.loads((h.scratch / "stats-fill.json").read_text())
    assert stats["active"] and stats["errors"] == 0 and stats["dropped"] == 0 and stats["steps"] == STEPS

    def tracked_to_the_end():
        m = h.parse_samples(d.scrape())
        return m if by_pid(m, "sentinel_process_alive").get(pid) == 0.0 and _gauge(
            m, "sentinel_journal_write_errors_total") > errors_at_fill else None

    m = h.wait_for(tracked_to_the_end, timeout=30, what="the exit tracked and the failed journal writes reported")
    assert d.proc.poll() is None, "the daemon died on the full disk"
    assert by_pid(m, "sentinel_process_step")[pid] == STEPS
    assert by_pid(m, "sentinel_ring_records_total", kind="step")[pid] == STEPS
    assert by_pid(m, "sentinel_ring_records_total", kind="event")[pid] == STEPS
    assert by_pid(m, "sentinel_ring_torn_records_total")[pid] == 0
    assert h.samples(h.fetch(d.url), "sentinel_processes", state="exited")[0][1] == 1.0
    assert _gauge(m, "sentinel_dir_free_bytes") == 0
    errors = _gauge(m, "sentinel_journal_write_errors_total")
    assert "journal write failed" in d.log_text()

    # Space back: the journal catches up with what it could not save, and is intact.
    fs.unfill()
    h.wait_for(lambda: journal_query(base, "SELECT exit, step FROM processes") == [("exited", STEPS)], timeout=20,
               what="the journal to catch up")
    assert d.kill(signal.SIGTERM) == 0
    assert journal_integrity(base) == "ok"
    print(f"disk filled after the ring existed: tmpfs {FS_SIZE >> 20} MiB via {fs.how}, {filled} B of ballast; "
          f"all {STEPS} steps recorded and tracked, stdout and exit code as without Sentinel; daemon alive, "
          f"{errors:.0f} journal write errors reported, journal caught up once space was back")
