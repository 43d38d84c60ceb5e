"""Prometheus exposition: the daemon's latest immutable snapshot as metric families, one section
(one function) per part of it: processes, probes, collectives and hangs, faults and GPUs, the
daemon itself.

The poll thread swaps in a new snapshot after each poll; a scrape reads whichever is current.
No locks, no per-sample bookkeeping (the prometheus/client_python custom-collector pattern). One
``SnapshotCollector`` takes the snapshot once per scrape and runs every section on it, so that all
the series of one scrape describe the same moment; adding a section is one entry in ``SECTIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, SummaryMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sentinel import __version__
from sentinel.daemon.snapshot import Snapshot

__all__ = [
    "PROCESS_LABELS", "process_labels", "process_families", "daemon_families", "probe_families",
    "collective_families", "fault_families", "SECTIONS", "SnapshotCollector", "build_registry",
]

# Identity labels on every per-process series. Bounded: no per-layer or per-request labels.
# The serving job is `job_id`: Prometheus owns `job` (the scrape job).
PROCESS_LABELS = ("job_id", "host", "pod", "namespace", "rank", "local_rank", "pid")
_IDENTITY_KEYS = ("job", "host", "pod", "namespace", "rank", "local_rank", "pid")


def process_labels(identity: dict) -> list[str]:
    """The PROCESS_LABELS values of a process's identity, in that order, as strings: "" for a field
    that is missing or -1."""
    out = []
    for name in _IDENTITY_KEYS:
        v = identity.get(name)
        out.append("" if v is None or v == -1 else str(v))
    return out


def process_families(snap: Snapshot) -> Iterator[Metric]:
    """Per-process identity, liveness, steps and ring health (labels: PROCESS_LABELS)."""
    labels = list(PROCESS_LABELS)
    yield InfoMetricFamily("sentinel_build", "Sentinel version.", value={"version": __version__})

    states = GaugeMetricFamily("sentinel_processes", "Hooked processes known, by state.", labels=["state"])
    counts = {"running": 0, "exited": 0, "died": 0}
    for p in snap.processes:
        counts[p.exit] = counts.get(p.exit, 0) + 1
    for state, n in sorted(counts.items()):
        states.add_metric([state], n)
    yield states

    info = GaugeMetricFamily(
        "sentinel_process_info", "Identity of a hooked process (value 1), and its probes' mode (observe, trap, "
        "contain; empty before its first probe).",
        labels=labels + ["framework", "framework_version", "world_size", "mode"],
    )
    alive = GaugeMetricFamily("sentinel_process_alive", "1 while the process's ring writer lives.", labels=labels)
    step = GaugeMetricFamily("sentinel_process_step", "Serving steps the process has marked (heartbeat).", labels=labels)
    beat = GaugeMetricFamily(
        "sentinel_process_heartbeat_timestamp_seconds", "Wall time of the process's last step.", labels=labels
    )
    p99 = GaugeMetricFamily(
        "sentinel_process_step_duration_p99_seconds", "p99 of recent step durations.", labels=labels
    )
    idle = GaugeMetricFamily(
        "sentinel_process_idle", "1 while the engine has no work (it does not step then), 0 while it has; only "
        "for processes whose adapter tells (vLLM's engine core, SGLang's scheduler).", labels=labels)
    records = CounterMetricFamily(
        "sentinel_ring_records", "Valid ring records read, by record kind.", labels=labels + ["kind"]
    )
    over = CounterMetricFamily(
        "sentinel_ring_overwritten_records", "Records lost because the ring wrapped before they were read.",
        labels=labels,
    )
    torn = CounterMetricFamily("sentinel_ring_torn_records", "Slots that never held a valid record.", labels=labels)
    bad = CounterMetricFamily(
        "sentinel_ring_bad_records", "Valid records refused for out-of-range values (a group size, a negative count).",
        labels=labels,
    )
    dropped = CounterMetricFamily(
        "sentinel_hook_dropped_records", "Hook calls that became counted no-ops in the process.", labels=labels
    )
    for p in snap.processes:
        lv = process_labels(p.identity)
        ident = p.identity
        ws = ident.get("world_size")
        info.add_metric(
            lv + [str(ident.get("framework", "")), str(ident.get("framework_version", "")),
                  "" if ws in (None, -1) else str(ws), p.mode],
            1,
        )
        alive.add_metric(lv, 1 if p.alive else 0)
        step.add_metric(lv, p.step)  # for a dead process: the step it died at
        if p.last_step_ns:
            beat.add_metric(lv, p.last_step_ns / 1e9)
        if p.step_p99_s is not None:
            p99.add_metric(lv, p.step_p99_s)
        if p.idle is not None and p.alive:
            idle.add_metric(lv, 1 if p.idle else 0)
        for kind, n in sorted(p.kinds.items()):
            records.add_metric(lv + [kind], n)
        over.add_metric(lv, p.overwritten)
        torn.add_metric(lv, p.torn)
        bad.add_metric(lv, p.bad_records)
        dropped.add_metric(lv, p.dropped)
    adapter = CounterMetricFamily(
        "sentinel_adapter_errors", "Framework adapter errors (each turned a check off: a hook point missing, or drift met at run time).",
        labels=labels + ["adapter"],
    )
    config = CounterMetricFamily(
        "sentinel_hook_config_errors", "Bad values in the hooks' environment config (the defaults were used).",
        labels=labels,
    )
    contained = CounterMetricFamily(
        "sentinel_contained_entries", "Page-table entries contain mode redirected to the reserved page "
        "(SENTINEL_CONTAIN_PAGE): each one a request that got a wrong answer instead of a crash.", labels=labels)
    for p in snap.processes:
        for name, n in sorted(p.adapter_errors.items()):
            adapter.add_metric(process_labels(p.identity) + [name], n)
        if p.config_errors:
            config.add_metric(process_labels(p.identity), p.config_errors)
        if p.contained or p.mode == "contain":
            contained.add_metric(process_labels(p.identity), p.contained)
    yield from (info, alive, step, beat, p99, idle, records, over, torn, bad, dropped, adapter, config, contained)


def daemon_families(snap: Snapshot) -> Iterator[Metric]:
    """The daemon itself: rings refused, records read, polls, disk, journal."""
    rejected = CounterMetricFamily(
        "sentinel_rings_rejected", "Files under rings/ that were not valid rings, by reason.", labels=["reason"]
    )
    for reason, n in sorted(snap.rejected.items()):
        rejected.add_metric([reason], n)
    yield rejected
    yield CounterMetricFamily("sentinel_daemon_ingested_records", "Records read by this daemon.", value=snap.ingested)
    yield CounterMetricFamily("sentinel_daemon_polls", "Poll cycles over all rings.", value=snap.polls)
    yield GaugeMetricFamily(
        "sentinel_daemon_last_poll_duration_seconds", "Time the last poll cycle took.", value=snap.poll_seconds
    )
    yield GaugeMetricFamily(
        "sentinel_daemon_snapshot_timestamp_seconds", "When the exported state was taken.", value=snap.taken_at
    )
    if snap.dir_free_bytes >= 0:
        yield GaugeMetricFamily(
            "sentinel_dir_free_bytes",
            "Bytes free on SENTINEL_DIR's filesystem. At 0 new rings cannot be created (those hooks are counted "
            "no-ops) and journal writes fail.", value=snap.dir_free_bytes,
        )
    yield CounterMetricFamily(
        "sentinel_rings_deleted", "Rings of dead processes deleted once --dead-ttl passed (their evidence is "
        "journaled).", value=snap.rings_deleted)
    yield CounterMetricFamily(
        "sentinel_ring_delete_errors", "Dead processes' rings the daemon could not delete (not its own to delete: "
        "see the daemon log); SENTINEL_DIR fills up.", value=snap.ring_delete_errors)
    yield GaugeMetricFamily("sentinel_log_files_followed", "Serving logs the daemon follows (DIR/logs/ and --log-file).",
                            value=snap.log_files)
    yield CounterMetricFamily("sentinel_log_read_bytes", "Bytes of serving logs read.", value=snap.log_bytes)
    yield CounterMetricFamily("sentinel_log_failures", "Failures (CUDA errors, device asserts, engine deaths) read from "
                              "serving logs; each is a fault record, or evidence merged into one.", value=snap.log_failures)
    yield CounterMetricFamily("sentinel_fault_sightings_merged", "Sightings of a failure merged into the fault record "
                              "of the same process (a log line, then its death, coredump or XID): paged once.",
                              value=snap.faults_merged)
    yield CounterMetricFamily("sentinel_kernel_log_xids", "NVRM Xid lines read from the kernel log (--kmsg).",
                              value=snap.kmsg_xids)
    yield CounterMetricFamily("sentinel_kernel_log_lost", "Kernel log records overwritten before the daemon read them.",
                              value=snap.kmsg_lost)
    yield CounterMetricFamily(
        "sentinel_journal_write_errors", "Journal writes that failed (e.g. a full disk); the daemon runs on and retries.",
        value=snap.journal_errors,
    )


def probe_families(snap: Snapshot) -> Iterator[Metric]:
    """What the probes saw: violations by check, page-table headroom, probe executions, batch shapes."""
    labels = list(PROCESS_LABELS)
    from sentinel_hooks.ringformat import Check

    viol = CounterMetricFamily(
        "sentinel_invariant_violations", "Invariant violations seen by the probes, by check.", labels=labels + ["check"]
    )
    headroom = GaugeMetricFamily(
        "sentinel_page_table_headroom_pages",
        "Pages left above the highest page index read (num_pages - 1 - max index), tightest probe site.",
        labels=labels,
    )
    capacity = GaugeMetricFamily(
        "sentinel_page_table_capacity_pages", "KV-cache pages of the buffer the tightest probe site checks against.",
        labels=labels,
    )
    execs = CounterMetricFamily(
        "sentinel_probe_executions", "Paged-KV probe executions (eager calls and graph replays).", labels=labels
    )
    batch = CounterMetricFamily(
        "sentinel_batch_steps", "Steps with shape context, by condition (all, at_token_budget, ...).",
        labels=labels + ["condition"],
    )
    tokens = GaugeMetricFamily("sentinel_batch_tokens", "Tokens in the latest noted step.", labels=labels)
    budget = GaugeMetricFamily("sentinel_batch_token_budget", "Token budget of the latest noted step.", labels=labels)
    checks = [c.label for c in Check]
    for p in snap.processes:
        lv = process_labels(p.identity)
        if not (p.violations or p.probe_execs or p.batch):
            continue
        for check in checks:  # every check, zeros included, so rate() and absent() behave
            viol.add_metric(lv + [check], p.violations.get(check, 0))
        if p.headroom is not None and p.alive:
            headroom.add_metric(lv, p.headroom[0])
            capacity.add_metric(lv, p.headroom[1])
        execs.add_metric(lv, p.probe_execs)
        if p.batch:
            for cond in ("steps", "at_token_budget", "over_token_budget", "uncaptured_batch_size"):
                batch.add_metric(lv + ["all" if cond == "steps" else cond], p.batch.get(cond, 0))
            if p.alive:
                tokens.add_metric(lv, p.last_tokens)
                if p.token_budget >= 0:
                    budget.add_metric(lv, p.token_budget)
    yield from (viol, headroom, capacity, execs, batch, tokens, budget)


def collective_families(snap: Snapshot) -> Iterator[Metric]:
    """Collective progress per rank and process group, heartbeat ages, and the hangs named."""
    labels = list(PROCESS_LABELS)
    # One series per rank, group and state, so Prometheus can join ranks across nodes and
    # compute the skew (deploy/prometheus/ ships that rule).
    seq = GaugeMetricFamily("sentinel_collective_seq",
                            "Sequence number of the last collective this rank enqueued / completed, per process group; "
                            "gpu_entered: how many of the group's collectives its GPU stream has reached (eager and "
                            "CUDA-graph replays; present where the hooks mark collectives on the GPU).",
                            labels=labels + ["pg", "state"])
    when = GaugeMetricFamily("sentinel_collective_timestamp_seconds",
                             "Wall time this rank last enqueued / completed a collective of process group pg: with "
                             "an enqueued one outstanding, the completed one is when it became blocked.",
                             labels=labels + ["pg", "state"])
    age = GaugeMetricFamily("sentinel_heartbeat_age_seconds", "Seconds since the process's last step.", labels=labels)
    for p in snap.processes:
        if not p.alive:
            continue
        lv = process_labels(p.identity)
        for name, g in sorted(p.groups.items()):
            seq.add_metric(lv + [name, "enqueued"], g["last_enqueued"])
            seq.add_metric(lv + [name, "completed"], g["last_completed"])
            for state in ("enqueued", "completed"):
                if g[f"last_{state}_ns"]:
                    when.add_metric(lv + [name, state], g[f"last_{state}_ns"] / 1e9)
            if g.get("gpu_entered", -1) >= 0:
                seq.add_metric(lv + [name, "gpu_entered"], g["gpu_entered"])
        if p.alive and p.last_step_ns:
            age.add_metric(lv, max(0.0, snap.taken_at - p.last_step_ns / 1e9))
    yield from (seq, when, age)
    stalled = GaugeMetricFamily("sentinel_hang_stalled_seconds",
                                "Present while a process group is hung: seconds since it last made progress.",
                                labels=["job_id", "pg"])
    seqg = GaugeMetricFamily("sentinel_hang_seq", "The collective a hung group is stuck at.", labels=["job_id", "pg"])
    culprit = GaugeMetricFamily("sentinel_hang_culprit",
                                "1 while this rank is a root culprit of a hang; reason: died, host_stall, behind, gpu_behind, "
                                "missing, mismatch. "
                                "A hang that follows from another group's (its missing ranks wait there) has none: "
                                "one incident, one page.", labels=["job_id", "pg", "rank", "group_rank", "reason"])
    victim = GaugeMetricFamily("sentinel_hang_victim",
                               "1 while this rank waits, in any of its groups, on a hang rooted in process group pg.",
                               labels=["job_id", "pg", "rank"])
    now = snap.taken_at
    for h in snap.hangs:
        stalled.add_metric([h.job, h.group], max(0.0, now - h.since))
        seqg.add_metric([h.job, h.group], h.seq)
        if h.caused_by:  # it follows from another group's hang: paged there
            continue
        for c in h.root_culprits:
            culprit.add_metric([h.job, h.group, str(c.rank), str(c.group_rank), c.reason], 1)
        for r in h.victims:
            victim.add_metric([h.job, h.group, str(r)], 1)
    total = CounterMetricFamily("sentinel_collective_hangs", "Collective hangs detected (journaled once each).",
                                labels=["job_id", "pg"])
    for (job, group), n in sorted(snap.hangs_total.items()):
        total.add_metric([job, group], n)
    yield from (stalled, seqg, culprit, victim, total)


def fault_families(snap: Snapshot) -> Iterator[Metric]:
    """Fault records, their consequences, XIDs, GPU utilisation and memory, coredumps and triage."""
    faults = CounterMetricFamily(
        "sentinel_faults", "Fault records journaled, by signature, its known issue and kind (cuda: a GPU fault; crash: "
        "another death by a signal or an exception; killed: a death without a word, e.g. SIGKILL).",
        labels=["signature", "exception", "kernel_family", "known_issue", "kind"])
    for (sig, exc, fam, ki, kind), n in sorted(snap.faults.items()):
        faults.add_metric([sig, exc, fam, ki, kind], n)
    recent = GaugeMetricFamily(
        "sentinel_fault_info", "A fault journaled in the last --dead-ttl seconds (value 1): its kind, signature and "
        "process. The fault alerts fire from it, with the pod, rank and pid, and resolve when it expires.",
        labels=list(PROCESS_LABELS) + ["kind", "signature", "exception", "kernel_family", "known_issue", "fault_id"])
    for f in snap.recent_faults:
        recent.add_metric(process_labels(f.identity or {}) + [
            f.kind, f.signature, f.exception_class, f.kernel_family, (f.known_issue or {}).get("id", ""), str(f.id)], 1)
    consequences = CounterMetricFamily(
        "sentinel_fault_consequences", "Deaths journaled as consequences of another fault of the same job (a parent "
        "killing its children after one crashed, or the reverse), by the cause's signature; they page as that fault.",
        labels=["cause_signature", "exception"])
    for (sig, exc), n in sorted(snap.fault_consequences.items()):
        consequences.add_metric([sig, exc], n)
    xids = CounterMetricFamily(
        "sentinel_gpu_xid_errors", "NVML XID events, by GPU and XID, and the pod holding that GPU when the node "
        "daemon can ask the kubelet (--pod-resources-socket; empty otherwise).", labels=["gpu", "xid", "namespace", "pod"])
    for (gpu, xid, ns, pod), n in sorted(snap.xids.items()):
        xids.add_metric([gpu, str(xid), ns, pod], n)
    util = GaugeMetricFamily("sentinel_gpu_utilization_ratio", "GPU utilisation (NVML), 0..1.", labels=["gpu", "uuid"])
    mem = GaugeMetricFamily("sentinel_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu", "uuid"])
    for g in snap.gpus:
        util.add_metric([g.gpu, g.uuid], g.utilization)
        mem.add_metric([g.gpu, g.uuid], g.memory_used)
    yield from (faults, recent, consequences, xids, util, mem)
    yield GaugeMetricFamily("sentinel_coredump_bytes", "Bytes of GPU coredumps kept under SENTINEL_DIR/cores.",
                            value=snap.coredump_bytes)
    triage = SummaryMetricFamily("sentinel_triage_duration_seconds", "cuda-gdb time per coredump.",
                                 count_value=snap.triage_count, sum_value=snap.triage_sum)
    yield triage
    yield CounterMetricFamily("sentinel_flight_recorder_rejected",
                              "Flight Recorder dumps refused (unsafe or malformed pickles).", value=snap.fr_rejected)
    yield CounterMetricFamily("sentinel_cudagdb_transcripts_rejected",
                              "cuda-gdb transcripts with no CUDA exception or kernel in them (not a GPU coredump, "
                              "truncated); the fault is journaled without the debugger's view.", value=snap.gdb_rejected)


# The sections, in exposition order; adding one is one line here.
SECTIONS: tuple[Callable[[Snapshot], Iterator[Metric]], ...] = (
    process_families, probe_families, collective_families, fault_families, daemon_families,
)


class SnapshotCollector(Collector):
    """Every section over one snapshot per scrape. ``snapshot()`` returns the daemon's current one."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list:
        return []  # dynamic label sets: let the registry call collect() for names

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        for section in SECTIONS:
            yield from section(snap)


def build_registry(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """The daemon's registry: every section, plus prometheus_client's process_* (the daemon's own RSS
    and CPU)."""
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    ProcessCollector(registry=registry)
    return registry
