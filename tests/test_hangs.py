"""Collective hangs named in seconds, with the culprit rank: real torch.distributed (gloo) jobs
under `sentinel run`, and the detector's reasoning on NCCL-shaped progress."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest

from sentinel.daemon import Daemon, DaemonConfig
from sentinel.hangs import HangConfig, HangDetector
from sentinel.state import GroupProgress, ProcessState

WORLD = 3
STRAGGLER = 1
HANG_AT = 6


def _start_job(h, mode: str, steps: int = 40, hang_at: int = HANG_AT, world: int = WORLD):
    """The ranks, started as a user would: `sentinel run -- torchrun ...`."""
    port = h.free_port()
    env = h.env(SENTINEL_JOB="hangtest", OMP_NUM_THREADS="1")
    argv = [h.sentinel, "run", "--dir", h.dir, "--", h.python, "-m", "torch.distributed.run",
            "--nproc-per-node", str(world), "--master-port", str(port), "--monitor-interval", "1",
            str(h.helpers / "gloo_ranks.py"), str(port), str(steps), str(hang_at), str(STRAGGLER), mode]
    return [h.spawn(argv, env=env, start_new_session=True)]


def _stop(procs) -> None:
    for p in procs:  # torchrun and its ranks: the whole session
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)


def _poll_until(daemon: Daemon, pred, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.poll_once()
        value = pred(daemon)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout}s; hangs: {[x.summary() for x in daemon.hangs.values()]}")


@pytest.mark.parametrize("mode,reason", [("sleep", "host_stall"), ("die", "died")])
def test_gloo_hang_names_the_culprit_within_seconds(h, mode, reason):
    procs = _start_job(h, mode)
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=2.0, multiplier=10.0)))
    try:
        # The waiting ranks enqueue collective #HANG_AT; the straggler never does.
        def waiting_enqueued(dm: Daemon) -> bool:
            ranks = {p.identity.get("rank"): p for p in dm.states.values()}
            return all(r in ranks and ranks[r].groups.get("0") is not None
                       and ranks[r].groups["0"].last_enqueued == HANG_AT for r in (0, 2))

        _poll_until(d, waiting_enqueued, timeout=60)
        t_enqueued = time.monotonic()
        hang = _poll_until(d, lambda dm: next(iter(dm.hangs.values()), None), timeout=30)
        detect_s = time.monotonic() - t_enqueued
        assert hang.group == "0" and hang.job == "hangtest" and hang.seq == HANG_AT
        assert hang.kind == "missing_ranks"
        assert [c.rank for c in hang.culprits] == [STRAGGLER]
        assert hang.culprits[0].reason == reason and hang.culprits[0].last_enqueued == HANG_AT - 1
        assert hang.waiting == (0, 2)
        assert detect_s < 2.0 + 5.0, detect_s  # the floor plus polling slack, not gloo's 120 s timeout
        # It is exported and journaled once.
        from prometheus_client import generate_latest

        from sentinel.exporter import build_registry

        d._publish()
        text = generate_latest(build_registry(lambda: d.snapshot)).decode()
        assert f'sentinel_hang_culprit{{group_rank="{STRAGGLER}",job_id="hangtest",pg="0",' \
               f'rank="{STRAGGLER}",reason="{reason}"}} 1.0' in text
        assert 'sentinel_collective_hangs_total{job_id="hangtest",pg="0"} 1.0' in text
        assert re.search(r'sentinel_collective_seq\{[^}]*job_id="hangtest"[^}]*pg="0"[^}]*rank="0",state="enqueued"\} '
                         + str(float(HANG_AT)), text)
        d.poll_once()
        assert d.hangs_total == {("hangtest", "0"): 1}
        rows = d.journal.hang_rows()
        assert len(rows) == 1 and rows[0]["seq"] == HANG_AT and rows[0]["resolved_at"] is None
        assert hang.op == "all_reduce"
        # With stacks: py-spy dumps of every live local rank, journaled with the hang. (When the
        # straggler dies, gloo's peers see the closed connection and exit too: no stacks then.)
        ev = _poll_until(d, lambda dm: dm.hang_evidence.get(hang.key), timeout=30)
        if mode == "die":
            return
        stacks = ev["stacks"]
        assert any(k.startswith("rank 0 ") for k in stacks) and any(k.startswith("rank 2 ") for k in stacks), stacks
        if mode == "sleep":
            assert "gloo_ranks.py" in stacks[next(k for k in stacks if k.startswith(f"rank {STRAGGLER} "))]
        assert "evidence" in d.journal.hang_rows()[0] and d.journal.hang_rows()[0]["evidence"]
        status = h.run([h.sentinel, "status", "--dir", h.dir], env=h.env())
        assert "HANG" in status.stdout and f"culprit rank {STRAGGLER}" in status.stdout, status.stdout
    finally:
        _stop(procs)
        d.close()


def test_no_hang_reported_for_a_healthy_job_over_a_minute(h):
    procs = _start_job(h, "none", steps=3000)  # >= 20 ms a step: over a minute of collectives
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=1.0, multiplier=10.0)))
    try:
        deadline = time.monotonic() + 150
        t0 = time.monotonic()
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            d.poll_once()
            assert not d.hangs, [x.summary() for x in d.hangs.values()]
            time.sleep(0.1)
        assert all(p.wait(timeout=10) == 0 for p in procs)
        assert time.monotonic() - t0 >= 60
        d.poll_once()
        groups = [p.groups["0"] for p in d.states.values()]
        assert len(groups) == WORLD and all(g.last_enqueued == g.last_completed == 3000 for g in groups)
    finally:
        _stop(procs)
        d.close()


def test_hang_in_a_subgroup_names_its_culprit(h):
    procs = _start_job(h, "subgroup", world=3)
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=2.0, multiplier=10.0)))
    try:
        hang = _poll_until(d, lambda dm: next(iter(dm.hangs.values()), None), timeout=90)
        assert hang.group != "0"  # not the default group
        assert [c.rank for c in hang.culprits] == [STRAGGLER] and hang.waiting == (0,)
        assert all(x.group == hang.group for x in d.hangs.values())
    finally:
        _stop(procs)
        d.close()


def test_a_legit_slow_step_does_not_alert(h):
    procs = _start_job(h, "slow", steps=40)
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=5.0, multiplier=10.0)))
    try:
        deadline = time.monotonic() + 90
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            d.poll_once()
            assert not d.hangs, [x.summary() for x in d.hangs.values()]
            time.sleep(0.1)
        assert all(p.wait(timeout=10) == 0 for p in procs)
    finally:
        _stop(procs)
        d.close()


def test_restarted_daemon_does_not_count_an_open_hang_twice(h):
    procs = _start_job(h, "sleep")
    cfg = DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2, hang=HangConfig(floor_s=1.0))
    d = Daemon(cfg)
    try:
        _poll_until(d, lambda dm: dm.hangs, timeout=60)
        d.persist()
    finally:
        d.close()
    d2 = Daemon(cfg)
    try:
        d2.poll_once()  # resumes the rings after their journaled positions: the context is rebuilt
        _poll_until(d2, lambda dm: dm.hangs, timeout=30)
        assert d2.hangs_total == {("hangtest", "0"): 1}
        assert len(d2.journal.hang_rows()) == 1
    finally:
        _stop(procs)
        d2.close()


# -- the detector's reasoning, on NCCL-shaped progress ------------------------------------------------

def _proc(rank: int, enq: int, done: int, now: float, *, alive: bool = True, beat_age: float = 0.1,
          size: int = 4) -> ProcessState:
    s = ProcessState(ring=f"r{rank}", identity={"rank": rank, "job": "j"})
    s.alive = alive
    s.exit = "running" if alive else "died"
    s.ended_at = now - 1
    s.last_step_ns = int((now - beat_age) * 1e9)
    s.step_ns = np.full(16, 10_000_000, dtype=np.int64)  # 10 ms steps
    g = GroupProgress(size=size, group_rank=rank, global_rank=rank, last_enqueued=enq, last_completed=done,
                      last_enqueued_ns=int((now - 20) * 1e9), last_completed_ns=int((now - 30) * 1e9))
    g.durations_ns = np.full(16, 1_000_000, dtype=np.int64)
    s.groups["tp"] = g
    return s


def test_nccl_waiting_ranks_run_ahead_but_the_lowest_is_the_culprit():
    # NCCL: the waiting ranks' enqueues return at once, so they get ahead (7, 8) before blocking at a
    # sync; rank 2 never enqueued #6. Flight Recorder would show it; so must we, live.
    now = time.time()
    states = [_proc(0, 8, 5, now), _proc(1, 7, 5, now), _proc(2, 5, 5, now, beat_age=30), _proc(3, 8, 5, now)]
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.seq == 6 and hang.kind == "missing_ranks"
    assert [(c.rank, c.reason) for c in hang.culprits] == [(2, "host_stall")]
    assert hang.waiting == (0, 1, 3)


def test_all_enqueued_but_one_died_blames_the_dead_rank():
    now = time.time()
    states = [_proc(0, 6, 5, now), _proc(1, 6, 5, now, alive=False), _proc(2, 6, 5, now), _proc(3, 6, 5, now)]
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.kind == "all_enqueued" and [(c.rank, c.reason) for c in hang.culprits] == [(1, "died")]


def test_a_rank_without_a_ring_is_named_missing():
    now = time.time()
    states = [_proc(0, 6, 5, now, size=3), _proc(1, 6, 5, now, size=3)]
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert [(c.group_rank, c.reason) for c in hang.culprits] == [(2, "missing")]


def test_threshold_adapts_to_slow_collectives():
    now = time.time()
    states = [_proc(0, 6, 5, now), _proc(1, 5, 5, now, beat_age=30)]
    for s in states:
        s.groups["tp"].durations_ns = np.full(16, 4_000_000_000, dtype=np.int64)  # 4 s collectives (long prefill)
    det = HangDetector(HangConfig(floor_s=5, multiplier=10))
    assert det.evaluate(states, now) == []  # stalled 20 s < 10 x 4 s
    assert len(det.evaluate(states, now + 25)) == 1  # 45 s > 40 s
