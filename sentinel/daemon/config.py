"""The daemon's settings (``sentinel daemon``'s options), one dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sentinel.triage import records
from sentinel.triage.hangs import HangConfig

__all__ = ["DaemonConfig"]


@dataclass
class DaemonConfig:
    """What the daemon watches and for how long it keeps things. Seconds unless a name says otherwise."""

    base_dir: str
    poll_interval: float = 0.2
    rescan_interval: float = 5.0
    persist_interval: float = 1.0
    keep_dead: int = 256  # dead processes kept in memory and in metrics (all stay in the journal)
    # How long a dead process's series, and a fault's sentinel_fault_info, stay exported: alerts on
    # them resolve once it has passed. A restarted server's previous incarnation stops paging then.
    dead_ttl_s: float = 600.0
    # The kubelet's pod-resources socket (node mode): XIDs are attributed to the pods holding the GPU.
    pod_resources_socket: str | None = None
    allowed_uids: set[int] | None = field(default_factory=lambda: {os.getuid()})
    use_events: bool = True
    hang: HangConfig = field(default_factory=HangConfig)
    cuda_gdb: str | None = None  # the debugger to run (default: cuda-gdb on PATH or in CUDA_HOME)
    gdb_timeout_s: float = 60.0
    cores_max_bytes: int = 2 << 30
    cores_per_signature: int = 3  # the first, the latest, and one more
    catalogs: list[str] = field(default_factory=list)  # extra known-issue files
    nvml: bool = True
    # How long to wait, after a process died, for its GPU coredump before its fault record is made
    # without one. The CUDA driver writes the dump in the faulting process before it terminates, so
    # the file is there at the death; the wait only covers file events arriving late (and the
    # cores/ folder is listed once more before giving up).
    crash_grace_s: float = 2.0
    consequence_window_s: float = records.CONSEQUENCE_WINDOW_S  # deaths this close to a related fault follow from it
    log_files: list[str] = field(default_factory=list)  # globs of serving logs to follow (besides DIR/logs/)
    kmsg: str = ""  # the kernel log to follow for XIDs (/dev/kmsg, or a file in its format); "": off
    group: int | None = None  # share what the daemon creates with this gid (setgid dirs 2770, files 0640)
