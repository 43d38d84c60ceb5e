"""Storms the daemon must ride out.

(a) A coredump storm: 50 GPU coredumps arrive in the cores folder in a burst, as when a bad
    deploy crashes every replica. The byte cap (--cores-max-mb) holds during the storm, not only
    after it; every fault is journaled; and the fault counter has one series per signature, so
    the CUDA-fault alert (which fires per sentinel_faults_total series, see
    deploy/prometheus/sentinel-alerts.rules.yml) pages once per signature, not once per dump.
    The cap holds while the daemon keeps up (docs/guarantees.md, known limits): retention runs as
    each dump lands, keeping room for one more, and never deletes a dump not yet triaged. So the
    storm goes at its nominal pace, but never ahead of the daemon: a dump lands only once the
    daemon has seen the one before, and at most BACKLOG earlier ones await triage. On a fast
    machine that is the nominal pace; on a slow one the storm slows down, and the cap must hold
    all the same.
(b) A ring storm: 10k files appear in and vanish from the rings folder in bursts, valid small
    rings and junk alike. /metrics keeps answering, a real hooked process keeps being tracked, and
    the daemon's memory stays bounded. Every file of the last bursts (held until the daemon has
    dealt with them, however long that takes here) was attached, rejected or ignored as its kind
    says. How fast /metrics answers and how fresh the hooked process's step stays are this
    machine's figures: printed, and failed on only past hang guards far above them.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from chaos_support import Harness, Samples, by_pid, dead_pid, journal_integrity, journal_query, start_daemon, write_core

# Five real cuda-gdb transcripts (two of the same fault: one signature) and an unreadable dump.
CORE_KINDS = ("illegal-address", "illegal-address-in-graph", "misaligned-address", "device-assert", "trap", None)


def _disk_use(folder: Path) -> int:
    """Bytes the folder's files occupy on disk (allocated blocks, what a full disk runs out of)."""
    total = 0
    try:
        with os.scandir(folder) as it:
            for e in it:
                try:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
                except FileNotFoundError:
                    pass  # deleted by retention while we looked
    except FileNotFoundError:
        pass
    return total


def _value(parsed: Samples, name: str) -> float | None:
    values = [v for n, _lab, v in parsed if n == name]
    return values[0] if values else None


RESCAN_S = 0.05  # the storm daemon's rescan interval: it sees a new dump by the first poll after one
# Dumps not yet triaged are spared by retention, as are the first and the latest of each signature:
# with up to BACKLOG + 1 untriaged, those fit under the cap with room for one more dump.
BACKLOG = 4


def run_core_storm(h: Harness, debugger: str, n: int, seconds: float, cap: int, size: int) -> dict:
    n_signatures = len(CORE_KINDS) - 1  # the two illegal-address runs share one signature
    # Spared: the first and the latest dump of each signature and BACKLOG + 1 untriaged; plus one landing.
    assert (2 * n_signatures + BACKLOG + 2) * size <= cap, "the storm's backlog would not fit under the cap"
    d = start_daemon(h, "--no-nvml", "--cuda-gdb", debugger, "--cores-max-mb", str(cap / 2**20),
                     "--rescan-interval", str(RESCAN_S))
    cores = Path(h.dir) / "cores"

    def polls() -> float:
        return _value(h.parse_samples(d.scrape()), "sentinel_daemon_polls_total")

    def journaled() -> int:
        return journal_query(h.dir, "SELECT COUNT(*) FROM faults")[0][0]

    peak, samples, done = [0], [0], threading.Event()

    def sample() -> None:  # disk use of the cores folder, every few ms through the whole storm
        while not done.is_set():
            peak[0] = max(peak[0], _disk_use(cores))
            samples[0] += 1
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    held = 0  # arrivals the daemon's pace held back beyond the nominal one
    try:
        t0 = time.monotonic()
        landed = None
        for i in range(n):
            # Paced arrivals: n dumps in `seconds`, each written in place in four pieces as the driver does.
            time.sleep(max(0.0, t0 + i * seconds / n - time.monotonic()))
            due = time.monotonic()
            if landed is not None:
                # The daemon has seen the last dump (and made room for this one): a rescan was due
                # after it landed, and a whole poll began after that (file events may come later).
                time.sleep(max(0.0, landed + RESCAN_S - time.monotonic()))
                p0 = polls()
                h.wait_for(lambda p0=p0: polls() >= p0 + 2, timeout=60, interval=0.01,
                           what=f"two daemon polls after dump {i - 1} landed")
                h.wait_for(lambda i=i: journaled() >= i - BACKLOG, timeout=120, interval=0.01,
                           what=f"at most {BACKLOG} dumps awaiting triage before dump {i}")
            held += time.monotonic() - due > seconds / n
            write_core(h.dir, dead_pid(i), CORE_KINDS[i % len(CORE_KINDS)], size=size, t=1_700_000_000 + i, chunks=4)
            landed = time.monotonic()
        written_s = time.monotonic() - t0
        h.wait_for(lambda: journal_query(h.dir, "SELECT COUNT(*) FROM faults")[0][0] == n, timeout=120,
                   interval=0.1, what=f"all {n} faults journaled")

        def exported():
            m = h.parse_samples(d.scrape())
            return m if _value(m, "sentinel_triage_duration_seconds_count") == n else None

        m = h.wait_for(exported, timeout=30, what="the last fault exported")
        drained_s = time.monotonic() - t0
    finally:
        done.set()
        sampler.join(timeout=10)
    assert d.proc.poll() is None
    final = _disk_use(cores)
    # Every fault journaled, once, with its own dump named.
    rows = journal_query(h.dir, "SELECT signature, core_path FROM faults")
    assert len({p for _s, p in rows}) == n and all(os.path.basename(p).startswith("core_") for _s, p in rows)
    signatures = {s for s, _p in rows}
    assert len(signatures) == n_signatures
    # One alert series per signature: the counter's label sets map one to one onto signatures.
    series = [lab for nm, lab, _v in m if nm == "sentinel_faults_total"]
    assert sorted(lab["signature"] for lab in series) == sorted(signatures), series
    per_sig = dict(journal_query(h.dir, "SELECT signature, COUNT(*) FROM faults GROUP BY signature"))
    assert {lab["signature"]: v for nm, lab, v in m if nm == "sentinel_faults_total"} == \
        {s: float(c) for s, c in per_sig.items()}
    assert _value(m, "sentinel_coredump_bytes") <= cap
    assert journal_integrity(h.dir) == "ok"
    return {"n": n, "written_s": written_s, "drained_s": drained_s, "peak": peak[0], "final": final, "cap": cap,
            "size": size, "samples": samples[0], "signatures": len(signatures),
            "kept": len(list(cores.glob("core_*"))), "held": held}


def _core_report(r: dict) -> str:
    return (f"coredump storm: {r['n']} dumps of {r['size'] // 1024} KiB written in {r['written_s']:.1f} s "
            f"({r['held']} held back to the daemon's pace), all "
            f"journaled after {r['drained_s']:.1f} s; cores/ disk use peak {r['peak']} B vs cap {r['cap']} B "
            f"({r['peak'] / r['cap']:.0%}, {r['samples']} samples), {r['final']} B and {r['kept']} dumps at the end; "
            f"{r['signatures']} signatures, one fault series each")


def test_coredump_storm_50_dumps_stays_under_the_cap(h, debugger):
    # 50 dumps in 10 s: the 50 in 60 s, six times faster.
    r = run_core_storm(h, debugger, n=50, seconds=10.0, cap=2 << 20, size=128 << 10)
    print(_core_report(r))
    assert r["peak"] <= r["cap"], _core_report(r)
    assert r["n"] * r["size"] > 3 * r["cap"]  # the cap had real work to do


@pytest.mark.slow
def test_coredump_storm_50_dumps_in_60_s_stays_under_the_cap(h, debugger):
    r = run_core_storm(h, debugger, n=50, seconds=60.0, cap=2 << 20, size=128 << 10)
    print(_core_report(r))
    assert r["peak"] <= r["cap"], _core_report(r)


# /metrics must answer within Prometheus's default scrape timeout (10 s), whatever the ring folder
# does: a slower scrape is a failed one. (Recorded here: 362 ms at most on 2 idle cores, 948 ms
# with both cores busy besides.)
SCRAPE_DEADLINE_S = 10.0
RSS_GROWTH_MAX = 64 << 20
# A hang guard: the hooked process's step must move in /metrics at least this often. It moves every
# few hundred ms on an idle machine (0.6 s at most on 2 idle cores; 2.2 s with both cores busy
# besides; 2-4 s idle before the attach budget and the closer thread): how often is a latency of
# this machine, printed, not a verdict. A daemon that stops tailing live rings fails here.
STEP_GAP_MAX_S = 30.0


def run_ring_storm(h: Harness, total: int, burst: int) -> dict:
    d = start_daemon(h, "--no-nvml")
    stop = h.scratch / "stop"
    stepper = h.spawn([h.python, str(h.helpers / "stepper.py"), str(stop), "0.005", "600"], env=h.hooked_env())
    pid = str(stepper.pid)
    h.wait_for(lambda: by_pid(h.parse_samples(d.scrape()), "sentinel_process_step").get(pid, 0) > 10, timeout=20,
               what="the hooked process tracked")
    rss0 = d.rss_bytes()
    hold = h.scratch / "hold"
    storm = h.spawn([h.python, str(h.helpers / "chaos_ring_storm.py"), h.dir, str(total), str(burst), "7",
                     "0.5", "3", str(hold)], env=h.env())
    held: dict[str, list[str]] | None = None
    handled = handled_by = None  # how the daemon dealt with the held files, once it had

    def dealt_with(names: dict[str, list[str]]) -> tuple[set[str], set[str]] | None:
        """(attached, rejected) ring names, once every held valid ring is attached and every held
        junk ring rejected."""
        attached = {r[0] for r in journal_query(h.dir, "SELECT ring FROM processes")}
        rejected = set()
        for line in d.log_text().splitlines():
            if '"ring rejected"' in line:
                rejected.add(json.loads(line)["ring"])
        if set(names["valid"]) <= attached and set(names["junk"]) <= rejected:
            return attached, rejected
        return None

    latencies, steps, rss, errors = [], [], [rss0], []
    while storm.poll() is None or len(latencies) < 5:
        if handled is None and held is None and (hold.parent / "hold.ready").exists():
            held = json.loads((hold.parent / "hold.ready").read_text())
            handled_by = time.monotonic() + 300  # a hang guard on the daemon getting through them
        if handled is None and held is not None:
            handled = dealt_with(held)
            if handled is not None:
                hold.touch()  # the held bursts may go
            assert handled is not None or time.monotonic() < handled_by, "the daemon never dealt with the held files"
        t = time.monotonic()
        try:
            text = d.scrape(timeout=SCRAPE_DEADLINE_S)
        except Exception as exc:  # a timeout, a refused or broken connection: all failures
            errors.append(f"{type(exc).__name__}: {exc}")
            text = ""
        latencies.append(time.monotonic() - t)
        m = re.search(rf'^sentinel_process_step{{[^}}]*pid="{pid}"[^}}]*}} (\S+)$', text, re.M)
        steps.append((time.monotonic(), float(m.group(1)) if m else None))
        rss.append(d.rss_bytes())
        time.sleep(0.25)  # four scrapes a second: far more than Prometheus, not a load of its own
    out, err = storm.communicate(timeout=10)
    assert storm.returncode == 0, err.decode(errors="replace")
    made = json.loads(out)
    assert not errors, errors[:5]
    # The hooked process was tracked throughout: its step never missing, never stuck for long.
    assert all(v is not None for _t, v in steps), "the hooked process dropped out of /metrics"
    gaps, last_t, last_v = [], steps[0][0], steps[0][1]
    for t, v in steps[1:]:
        if v > last_v:
            gaps.append(t - last_t)
            last_t, last_v = t, v
    assert steps[-1][1] > steps[0][1] and max(gaps, default=0) < STEP_GAP_MAX_S, f"step tracking stalled {max(gaps):.2f} s"

    # Settled: the junk counted by reason, the valid rings journaled, the hooked process exact.
    stop.touch()
    so, se = stepper.communicate(timeout=20)
    assert stepper.returncode == 0 and se == b"", se
    final_steps = json.loads(so)["steps"]

    def exited():
        m = h.parse_samples(d.scrape())
        return m if by_pid(m, "sentinel_process_alive").get(pid) == 0.0 else None

    m = h.wait_for(exited, timeout=20, what="the hooked process's exit")
    assert by_pid(m, "sentinel_process_step")[pid] == final_steps
    assert by_pid(m, "sentinel_ring_records_total", kind="step")[pid] == final_steps
    rejected = {lab["reason"]: v for n, lab, v in m if n == "sentinel_rings_rejected_total"}
    attached = journal_query(h.dir, "SELECT COUNT(*) FROM processes")[0][0] - 1
    # The storm reached the daemon: every valid ring of the held bursts attached, every junk one
    # rejected, the temp and non-ring files left alone; nothing counted that the storm did not make.
    assert held is not None and handled is not None
    att, rej = handled
    assert not set(held["other"]) & (att | rej), sorted(set(held["other"]) & (att | rej))[:5]
    assert not set(held["valid"]) & rej and not set(held["junk"]) & att
    assert len(held["valid"]) + len(held["junk"]) > 0
    assert 0 < attached <= made["valid"] and 0 < sum(rejected.values()) <= made["junk"], (rejected, attached, made)
    assert d.proc.poll() is None and journal_integrity(h.dir) == "ok"
    rss.append(d.rss_bytes())
    return {"made": made, "scrapes": len(latencies), "max_latency": max(latencies),
            "p50_latency": sorted(latencies)[len(latencies) // 2], "rss0": rss0, "rss_max": max(rss), "rss_end": rss[-1],
            "rejected": rejected, "attached": attached, "max_gap": max(gaps, default=0.0)}


def _ring_report(r: dict) -> str:
    mb = 2**20
    return (f"ring storm: {r['made']['valid']} valid rings + {r['made']['junk']} junk files in {r['made']['bursts']} "
            f"bursts over {r['made']['seconds']} s; /metrics answered {r['scrapes']} scrapes, max {r['max_latency']*1e3:.0f} ms "
            f"(p50 {r['p50_latency']*1e3:.0f} ms, deadline {SCRAPE_DEADLINE_S:.0f} s); daemon attached {r['attached']} "
            f"rings, rejected {int(sum(r['rejected'].values()))} files {r['rejected']}; hooked process's step never "
            f"stalled more than {r['max_gap']:.2f} s; RSS {r['rss0'] / mb:.0f} MB -> max {r['rss_max'] / mb:.0f} MB, "
            f"{r['rss_end'] / mb:.0f} MB after")


def test_ring_storm_10k_files_daemon_stays_responsive(h):
    r = run_ring_storm(h, total=10_000, burst=500)
    print(_ring_report(r))
    assert r["max_latency"] < SCRAPE_DEADLINE_S
    assert r["rss_max"] - r["rss0"] < RSS_GROWTH_MAX, _ring_report(r)


@pytest.mark.slow
def test_ring_storm_100k_files_daemon_stays_responsive(h):
    r = run_ring_storm(h, total=100_000, burst=500)  # the same rate as above, for ten times as long
    print(_ring_report(r))
    assert r["max_latency"] < SCRAPE_DEADLINE_S
    assert r["rss_max"] - r["rss0"] < RSS_GROWTH_MAX, _ring_report(r)
