"""Collective hangs named in seconds, with the culprit rank: real torch.distributed (gloo) jobs
under `sentinel run`, and the detector's reasoning on NCCL-shaped progress."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.daemon.ringreader import RingReader
from sentinel.daemon.state import GroupProgress, ProcessState
from sentinel.triage.hangs import Hang, HangConfig, HangDetector
from sentinel_hooks import ringformat as rf

WORLD = 3
STRAGGLER = 1
HANG_AT = 6
# Guards against a hang of the test itself, not speed claims: a torchrun job of three torch ranks
# starts in seconds, but a loaded machine may take a minute or more.
START_S = 180


def _start_job(h, mode: str, steps: int = 40, hang_at: int = HANG_AT, world: int = WORLD, straggler: int = STRAGGLER):
    """The ranks, started as a user would: `sentinel run -- torchrun ...`."""
    port = h.free_port()
    env = h.env(SENTINEL_JOB="hangtest", OMP_NUM_THREADS="1")
    argv = [h.sentinel, "run", "--dir", h.dir, "--", h.python, "-m", "torch.distributed.run",
            "--nproc-per-node", str(world), "--master-port", str(port), "--monitor-interval", "1",
            str(h.helpers / "gloo_ranks.py"), str(port), str(steps), str(hang_at), str(straggler), mode]
    return [h.spawn(argv, env=env, start_new_session=True)]


def _stop(h, procs) -> None:
    for p in procs:  # torchrun and its ranks (each in a session of its own)
        h.kill_tree(p.pid)
        p.wait(timeout=10)


def _poll_until(daemon: Daemon, pred, timeout: float, polls: list[float] | None = None):
    """Poll until ``pred`` holds (a deadline bounds a hang only). ``polls`` gets each poll's start
    (wall time, the detector's clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if polls is not None:
            polls.append(time.time())
        daemon.poll_once()
        value = pred(daemon)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not seen within {timeout}s; hangs: {[x.summary() for x in daemon.hangs.open.values()]}")


def _completed_at(h, seq: int) -> float | None:
    """Wall time the first rank recorded collective #``seq`` of the default group complete, from the
    ranks' own rings (read once the job is over); None if none did."""
    times = []
    for path in h.rings():
        reader = RingReader(str(path))
        try:
            recs = reader.tail(writer_alive=False).records
            done = recs[(recs["kind"] == rf.Kind.COLLECTIVE_COMPLETE) & (recs["a"] == seq)]
            times += [int(ts) for ts, tag in zip(done["ts_ns"].tolist(), done["tag"].tolist())
                      if reader.name(tag) in ("pg:0", "0")]
        finally:
            reader.close()
    return min(times) / 1e9 if times else None


def _watch_healthy_job(d: Daemon, procs, timeout: float) -> list[tuple[float, Hang]]:
    """Poll the daemon until the job exits; returns every hang it reported, with the start of the
    poll that reported it."""
    seen: list[tuple[float, Hang]] = []
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, f"the job did not finish in {timeout} s"
        t_poll = time.time()
        d.poll_once()
        seen += [(t_poll, x) for x in d.hangs.open.values()]
        time.sleep(0.1)
    assert all(p.wait(timeout=10) == 0 for p in procs)
    return seen


def _assert_only_real_stalls(h, seen: list[tuple[float, Hang]], floor_s: float) -> str:
    """A healthy job may still stall past the threshold on a loaded machine; the detector is right to
    call that. What it must never do is call a stall shorter than its threshold: every hang it
    reported is over a collective still outstanding when that poll began, stalled at least the
    threshold, which is at least the floor."""
    stalls = []
    for t_poll, hang in seen:
        assert hang.threshold_s >= floor_s, hang
        assert hang.detected_at - hang.since >= hang.threshold_s, hang
        done = _completed_at(h, hang.seq)
        assert done is not None and done >= t_poll, (
            f"hang reported for collective #{hang.seq}, completed {t_poll - done:.3f} s before the poll began: "
            f"{hang.summary()}")
        stalls.append(round(done - hang.since, 2))
    return f"{len(seen)} hang report(s), on real stalls of {stalls} s" if seen else "no hang reported"


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

        _poll_until(d, waiting_enqueued, timeout=START_S)
        t_enqueued = time.monotonic()
        polls: list[float] = []
        hang = _poll_until(d, lambda dm: next(iter(dm.hangs.open.values()), None), timeout=120, polls=polls)
        detect_s = time.monotonic() - t_enqueued
        assert hang.group == "0" and hang.job == "hangtest" and hang.seq == HANG_AT
        assert hang.kind == "missing_ranks"
        assert [c.rank for c in hang.culprits] == [STRAGGLER]
        assert hang.culprits[0].reason == reason and hang.culprits[0].last_enqueued == HANG_AT - 1
        assert hang.waiting == (0, 2)
        # Named as soon as the stall passed the threshold (the floor, for these fast collectives),
        # not gloo's 120 s timeout: not before, and by the first poll that began after it. How many
        # seconds that is depends on this machine; bench/hangs_cpu.py measures it.
        assert hang.threshold_s >= 2.0 and hang.detected_at - hang.since >= hang.threshold_s, hang
        assert all(t < hang.since + hang.threshold_s for t in polls[:-1]), (
            "an earlier poll began past the threshold and did not call the hang")
        print(f"hang ({mode}) named {detect_s:.2f} s after the waiting ranks enqueued; threshold "
              f"{hang.threshold_s:.2f} s, stalled {hang.detected_at - hang.since:.2f} s when named")
        # It is exported and journaled once.
        from prometheus_client import generate_latest

        from sentinel.exporter.collectors import build_registry

        d._publish()
        text = generate_latest(build_registry(lambda: d.snapshot)).decode()
        assert f'sentinel_hang_culprit{{group_rank="{STRAGGLER}",job_id="hangtest",pg="0",' \
               f'rank="{STRAGGLER}",reason="{reason}"}} 1.0' in text
        assert 'sentinel_collective_hangs_total{job_id="hangtest",pg="0"} 1.0' in text
        (rank0,) = [p for p in d.snapshot.processes if p.identity.get("rank") == 0]
        assert rank0.groups["0"]["last_enqueued"] == HANG_AT
        # Exported while it lives (a dead rank's sequence numbers end with it: in "die" mode gloo's
        # peers see the closed connection and exit too).
        exported = re.search(r'sentinel_collective_seq\{[^}]*job_id="hangtest"[^}]*pg="0"[^}]*rank="0",state="enqueued"\} '
                             + str(float(HANG_AT)), text)
        assert bool(exported) == rank0.alive, (rank0.alive, exported)
        # When it became blocked, for a join across nodes: its last completion, before the hang's start.
        blocked = re.search(r'sentinel_collective_timestamp_seconds\{[^}]*pg="0"[^}]*rank="0",state="completed"\} '
                            r'([0-9.e+]+)', text)
        assert bool(blocked) == rank0.alive and (not blocked or float(blocked.group(1)) <= hang.since + 1e-3), blocked
        d.poll_once()
        assert d.hangs.totals == {("hangtest", "0"): 1}
        rows = d.journal.hang_rows()
        assert len(rows) == 1 and rows[0]["seq"] == HANG_AT and rows[0]["resolved_at"] is None
        assert hang.op == "all_reduce"
        # With stacks: py-spy dumps of every live local rank, journaled with the hang. (When the
        # straggler dies, gloo's peers see the closed connection and exit too: no stacks then.)
        ev = _poll_until(d, lambda dm: dm.hangs.evidence.get(hang.key), timeout=60)
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
        _stop(h, procs)
        d.close()


def test_a_rank_one_collective_ahead_is_a_desync(h):
    """3 gloo ranks; at step HANG_AT rank 1 skips its all-reduce and runs the step's next collective
    (an all-gather of another size): every rank enqueued collective #HANG_AT, not the same one. Rank 1
    is named, a mismatch, with both sides, as the Flight Recorder analyser would name it."""
    procs = _start_job(h, "ahead")
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=2.0, multiplier=10.0)))
    try:
        hang = _poll_until(d, lambda dm: next(iter(dm.hangs.open.values()), None), timeout=START_S)
        assert hang.group == "0" and hang.seq == HANG_AT and hang.kind == "mismatch", hang.summary()
        assert [(c.rank, c.reason) for c in hang.culprits] == [(STRAGGLER, "mismatch")], hang.summary()
        assert hang.culprits[0].detail == (f"COLLECTIVE_TYPE_MISMATCH: enqueued all_gather_into_tensor as collective "
                                           f"#{HANG_AT} where the others have all_reduce")
    finally:
        _stop(h, procs)
        d.close()


def test_no_hang_reported_for_a_healthy_job_over_a_minute(h):
    procs = _start_job(h, "none", steps=3000)  # >= 20 ms a step: over a minute of collectives
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=1.0, multiplier=10.0)))
    try:
        t0 = time.monotonic()
        seen = _watch_healthy_job(d, procs, timeout=600)
        assert time.monotonic() - t0 >= 60
        print(f"healthy job, {time.monotonic() - t0:.0f} s: {_assert_only_real_stalls(h, seen, 1.0)}")
        d.poll_once()
        groups = [p.groups["0"] for p in d.states.values()]
        assert len(groups) == WORLD and all(g.last_enqueued == g.last_completed == 3000 for g in groups)
    finally:
        _stop(h, procs)
        d.close()


def test_hang_in_a_subgroup_names_its_culprit(h):
    procs = _start_job(h, "subgroup", world=3)
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=2.0, multiplier=10.0)))
    try:
        hang = _poll_until(d, lambda dm: next(iter(dm.hangs.open.values()), None), timeout=START_S)
        assert hang.group != "0"  # not the default group
        assert [c.rank for c in hang.culprits] == [STRAGGLER] and hang.waiting == (0,)
        assert all(x.group == hang.group for x in d.hangs.open.values())
    finally:
        _stop(h, procs)
        d.close()


def test_a_hang_across_groups_is_one_incident_with_its_root_culprit(h):
    """3 gloo ranks, a subgroup {1,2}; rank 2 stops before the subgroup's all-reduce. Rank 1 waits in
    the subgroup, rank 0 in the next world all-reduce. Rank 2 is the root culprit, ranks 0 and 1 its
    victims: one incident, one culprit series (one page), and `sentinel status` says so."""
    procs = _start_job(h, "crossgroup", world=3, straggler=2)
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=2.0, multiplier=10.0)))
    try:
        def both(dm):
            hangs = list(dm.hangs.open.values())
            return hangs if len(hangs) == 2 and any(x.caused_by for x in hangs) else None

        hangs = _poll_until(d, both, timeout=START_S)
        (root,) = [x for x in hangs if x.caused_by is None]
        (follows,) = [x for x in hangs if x.caused_by is not None]
        assert follows.caused_by == root.key and follows.group == "0"
        assert [(c.rank, c.reason) for c in root.root_culprits] == [(2, "host_stall")]
        assert root.victims == (0, 1)
        assert {(c.rank, c.reason) for c in follows.culprits} >= {(1, "waiting")}
        from prometheus_client import generate_latest

        from sentinel.exporter.collectors import build_registry

        d.persist()
        text = generate_latest(build_registry(lambda: d.snapshot)).decode()
        culprit_lines = [ln for ln in text.splitlines() if ln.startswith("sentinel_hang_culprit{")]
        assert len(culprit_lines) == 1 and 'rank="2"' in culprit_lines[0] and f'pg="{root.group}"' in culprit_lines[0]
        res = h.run([h.sentinel, "status", "--dir", h.dir], env=h.env())
        banner = [ln for ln in res.stdout.splitlines() if ln.startswith("!! HANG")]
        assert len(banner) == 1 and "culprit rank 2 (host_stall)" in banner[0] and "victims 0, 1" in banner[0], res.stdout
        assert "and pg 0 stuck at #7 (all_reduce) because of it, waiting there: rank 0" in res.stdout
    finally:
        _stop(h, procs)
        d.close()


def test_a_legit_slow_step_does_not_alert(h):
    procs = _start_job(h, "slow", steps=40)  # one 4 s step: under the 5 s floor
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2,
                            hang=HangConfig(floor_s=5.0, multiplier=10.0)))
    try:
        seen = _watch_healthy_job(d, procs, timeout=START_S)
        print(f"4 s step: {_assert_only_real_stalls(h, seen, 5.0)}")
        # The slow collective itself, from the ranks' own records: it did take seconds.
        assert _completed_at(h, HANG_AT) - _completed_at(h, HANG_AT - 1) >= 4.0
    finally:
        _stop(h, procs)
        d.close()


def test_restarted_daemon_does_not_count_an_open_hang_twice(h):
    procs = _start_job(h, "sleep")
    cfg = DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0.2, hang=HangConfig(floor_s=1.0))
    d = Daemon(cfg)
    try:
        _poll_until(d, lambda dm: dm.hangs.open, timeout=START_S)
        d.persist()
    finally:
        d.close()
    d2 = Daemon(cfg)
    try:
        d2.poll_once()  # resumes the rings after their journaled positions: the context is rebuilt
        _poll_until(d2, lambda dm: dm.hangs.open, timeout=60)
        assert d2.hangs.totals == {("hangtest", "0"): 1}
        assert len(d2.journal.hang_rows()) == 1
    finally:
        _stop(h, procs)
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


def _group_proc(rank: int, groups: dict, now: float, beat_age: float = 0.5) -> ProcessState:
    """A process in several groups: ``groups`` maps name -> (group rank, size, last enqueued, last completed)."""
    s = _proc(rank, 0, 0, now, beat_age=beat_age)
    s.groups = {}
    for name, (grank, size, enq, done) in groups.items():
        g = GroupProgress(group_rank=grank, size=size, last_enqueued=enq, last_completed=done,
                          last_op=1, last_enqueued_ns=int((now - 20) * 1e9), last_completed_ns=int((now - 30) * 1e9))
        g.durations_ns = np.full(16, 1_000_000, dtype=np.int64)
        s.groups[name] = g
    return s


def test_a_hang_in_one_group_is_the_root_of_the_hang_it_causes_in_another():
    """World group {0,1,2}, subgroup {1,2}; rank 2 stops before subgroup #6. Rank 1 waits in the
    subgroup, so it never reaches world #7, where rank 0 waits. Rank 1 is a victim, not a culprit;
    the world hang follows from the subgroup's; one root: rank 2, with ranks 0 and 1 its victims."""
    now = time.time()
    states = [_group_proc(0, {"world": (0, 3, 7, 6)}, now),
              _group_proc(1, {"world": (1, 3, 6, 6), "sub": (0, 2, 6, 5)}, now),
              _group_proc(2, {"world": (2, 3, 6, 6), "sub": (1, 2, 5, 5)}, now, beat_age=30)]
    hangs = {h.group: h for h in HangDetector(HangConfig(floor_s=5)).evaluate(states, now)}
    sub, world = hangs["sub"], hangs["world"]
    assert sub.caused_by is None and [(c.rank, c.reason) for c in sub.culprits] == [(2, "host_stall")]
    assert sub.victims == (0, 1)
    assert world.caused_by == sub.key
    assert {(c.rank, c.reason) for c in world.culprits} == {(1, "waiting"), (2, "host_stall")}
    assert "waits in group sub collective #6" in next(c.detail for c in world.culprits if c.rank == 1)


def test_groups_waiting_on_each_other_stay_two_roots():
    """A cross-group deadlock: rank 0 waits in group a for rank 1, which waits in group b for rank 0.
    Neither hang follows from the other: both stay roots and both are paged."""
    now = time.time()
    states = [_group_proc(0, {"a": (0, 2, 6, 5), "b": (0, 2, 5, 5)}, now),
              _group_proc(1, {"a": (1, 2, 5, 5), "b": (1, 2, 6, 5)}, now)]
    hangs = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert len(hangs) == 2 and all(h.caused_by is None for h in hangs)
    assert all(c.reason == "waiting" for h in hangs for c in h.culprits)


def test_ranks_in_different_collectives_at_one_sequence_number_are_a_desync():
    """All three ranks enqueued #6 and none completes it: rank 2's #6 is an all_gather of another size
    (a rank one collective ahead, or in a branch the others skipped). It is the culprit, named with
    both sides, as the Flight Recorder analyser would (COLLECTIVE_TYPE_MISMATCH)."""
    now = time.time()
    states = [_proc(r, 6, 5, now, size=3) for r in range(3)]
    for s in states:
        g = s.groups["tp"]
        g.last_op, g.last_numel, g.last_dtype = rf.COLLECTIVE_OPS["all_reduce"], 4096, 3
    g = states[2].groups["tp"]
    g.last_op, g.last_numel = rf.COLLECTIVE_OPS["all_gather_into_tensor"], 1024
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.kind == "mismatch" and [(c.rank, c.reason) for c in hang.culprits] == [(2, "mismatch")]
    assert hang.culprits[0].detail == ("COLLECTIVE_TYPE_MISMATCH: enqueued all_gather_into_tensor as collective #6 "
                                       "where the others have all_reduce")
    # the same op with another size: SIZE_OR_SYNTAX_MISMATCH
    g.last_op = rf.COLLECTIVE_OPS["all_reduce"]
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.culprits[0].detail.startswith("SIZE_OR_SYNTAX_MISMATCH: enqueued 1024 as collective #6")
    # every rank the same: no desync to name (a hang with all enqueued, nobody dead: no culprit)
    g.last_numel = 4096
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.kind == "all_enqueued" and hang.culprits == ()


def test_every_host_enqueued_it_but_one_gpu_is_behind():
    """Every host enqueued #6 (graph replays enqueue on the host before the GPU runs them) and none
    completes it; the device words say rank 1's GPU never got to it (a kernel before it is stuck):
    rank 1 is the culprit, gpu_behind. Without device words there is no one to name."""
    now = time.time()
    states = [_proc(r, 6, 5, now, size=3) for r in range(3)]
    for r, s in enumerate(states):
        s.groups["tp"].gpu_entered = 130 if r == 1 else 131
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.kind == "all_enqueued"
    assert [(c.rank, c.reason) for c in hang.culprits] == [(1, "gpu_behind")]
    assert "its GPU passed 130 of the group's collective marks, the others 131" in hang.culprits[0].detail
    states[0].groups["tp"].gpu_entered = -1  # a rank without device words: no comparison made
    (hang,) = HangDetector(HangConfig(floor_s=5)).evaluate(states, now)
    assert hang.culprits == ()


def test_device_words_are_read_from_the_ring_into_group_progress(tmp_path):
    """The daemon side of the device words: the info word names the group, the counter is read with
    plain loads of the ring's mapping (what the GPU writes, here written by hand)."""
    from sentinel_hooks.writer import RingWriter

    w = RingWriter.create(str(tmp_path), identity={"rank": 0, "job": "j"}, capacity=64)
    tag = w.intern("pg:tp:0[0-1]")
    w.emit(rf.Kind.COLLECTIVE_ENQUEUE, 0, 2, 0, 0, tag)  # the group
    words = rf.device_words(w._mm)
    words[rf.DEVICE_WORDS + 0] = rf.pack_device_word_info(rf.DeviceWord.COLLECTIVE_ENTERED, tag)
    words[0] = 41
    reader = RingReader(w.path)
    s = ProcessState(ring="r", identity={})
    s.ingest(reader.tail(writer_alive=True).records, reader.name)
    s.apply_device_words(reader.device_words, reader.name)
    assert s.device_words == {0: "tp:0[0-1]"}
    assert s.groups["tp:0[0-1]"].gpu_entered == 41
    words[0] = 42
    s.apply_device_words(reader.device_words, reader.name)
    assert s.groups["tp:0[0-1]"].gpu_entered == 42
    # The group made again takes a new word: the old one is retired, not read in turn with it.
    words[rf.DEVICE_WORDS + 1] = rf.pack_device_word_info(rf.DeviceWord.COLLECTIVE_ENTERED, tag)
    words[1] = 3
    s.apply_device_words(reader.device_words, reader.name)
    assert s.device_words == {0: "", 1: "tp:0[0-1]"} and s.groups["tp:0[0-1]"].gpu_entered == 3
    assert rf.unpack_device_word_info(rf.pack_device_word_info(1, tag)) == (1, tag)
    words.release()
    reader.close()
    w.close()
