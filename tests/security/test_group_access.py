"""The sidecar pattern with real, different users: the serving process (one uid) and the daemon
(another uid) share only a group. With SENTINEL_GROUP / --group the daemon reads the serving
process's ring and GPU coredump through the group's permissions; a user outside the group reads
neither. No /etc entries are needed: the uids and gids are bare numbers."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from security_support import (
    DAEMON_GID,
    DAEMON_UID,
    OUTSIDER_GID,
    OUTSIDER_UID,
    SERVING_GID,
    SERVING_UID,
    SHARED_GID,
    TESTS,
    Procs,
    Users,
    needs_root,
    world_dir,
)

pytestmark = needs_root

# The serving process: steps, then writes a GPU coredump as the CUDA driver would (into
# SENTINEL_DIR/cores, named core_<host>_<pid>_<time>.nvcudmp, with the process's umask), and
# exits when told. The dump's body names the real cuda-gdb transcript the stand-in debugger prints.
SERVING = r"""
import os, socket, sys, time, sentinel_hooks
for _ in range(5):
    sentinel_hooks.step()
core = os.path.join(os.environ["SENTINEL_DIR"], "cores",
                    f"core_{socket.gethostname()}_{os.getpid()}_{int(time.time())}.nvcudmp")
with open(core, "wb") as f:
    f.write(b"TRANSCRIPT cuda-gdb-illegal-address.txt\n" + bytes(4096))
print(os.getpid(), core, flush=True)
sys.stdin.readline()
"""


def _fake_cuda_gdb(users: Users, folder: Path) -> str:
    """cuda-gdb's stand-in (CI has no GPU): it opens the core as the daemon's user, so a transcript
    comes back only if that user may read the file."""
    exe = folder / "cuda-gdb"
    exe.write_text(f"#!/bin/sh\nexec {users.python} {TESTS / 'helpers' / 'fake_cuda_gdb.py'} \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def test_daemon_of_another_uid_reads_rings_and_cores_through_the_group(users: Users, procs: Procs, h,
                                                                       tmp_path: Path) -> None:
    top = world_dir(mode=0o1777)  # like /tmp, or an emptyDir: the daemon makes SENTINEL_DIR in it
    try:
        base = top / "sentinel"
        prog = top / "serving.py"
        prog.write_text(SERVING)
        prog.chmod(0o644)
        gdb = _fake_cuda_gdb(users, top)
        port = h.free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        daemon_cmd = users.sentinel(
            "daemon", "--dir", str(base), "--listen", f"127.0.0.1:{port}", "--group", str(SHARED_GID),
            "--allow-uid", str(SERVING_UID), "--cuda-gdb", gdb, "--no-nvml", "--poll-interval", "0.05",
            "--rescan-interval", "0.25")
        procs.start_daemon(users.argv(daemon_cmd, DAEMON_UID, DAEMON_GID, (SHARED_GID,)), tmp_path / "daemon.log",
                           url, env=h.env())
        assert stat.S_IMODE(base.stat().st_mode) == 0o2770 and base.stat().st_gid == SHARED_GID

        # umask 027: what a group-shared deployment runs with; the dump's mode comes from it, as
        # CUDA's would. SENTINEL_GROUP gives the ring, its folders and the dump's folder to the group.
        serving_cmd = users.sentinel("run", "--dir", str(base), "--", users.python, str(prog))
        serving = procs.start(users.argv(serving_cmd, SERVING_UID, SERVING_GID, (SHARED_GID,), umask="027"),
                              tmp_path / "serving.log", env=h.env(SENTINEL_GROUP=str(SHARED_GID)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pid, core = serving.stdout.readline().decode().split()
        (ring,) = (base / "rings").glob(f"*.{pid}.*.ring")
        # The daemon made the folders, the serving uid wrote into them: the group's write access.
        for path, uid, mode in ((base / "rings", DAEMON_UID, 0o2770), (base / "cores", DAEMON_UID, 0o2770),
                                (ring, SERVING_UID, 0o640), (Path(core), SERVING_UID, 0o640)):
            st = path.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, SHARED_GID, mode), path

        # The daemon (another uid) reads the ring: the steps reach /metrics.
        h.wait_for(lambda: h.samples(h.fetch(url), "sentinel_process_step", pid=pid) and
                   h.samples(h.fetch(url), "sentinel_process_step", pid=pid)[0][1] == 5.0,
                   timeout=20, what="the serving process's steps in the daemon's metrics")

        # The process exits; the daemon's debugger (its uid) reads the dump: a fault from its transcript.
        serving.stdin.close()
        assert serving.wait(timeout=30) == 0

        def fault() -> list:
            return [lab for lab, v in h.samples(h.fetch(url), "sentinel_faults_total") if v >= 1]

        (labels,) = h.wait_for(fault, timeout=30, what="the coredump's fault in the daemon's metrics")
        assert labels["exception"] != "unknown" and labels["kernel_family"], labels

        # Outside the group: neither the ring nor the dump can be read.
        probe = "import sys\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'rb')\n    except PermissionError:\n" \
                "        print('denied')\n    else:\n        print('read')\n"
        res = subprocess.run(users.argv([users.python, "-c", probe, str(ring), core], OUTSIDER_UID, OUTSIDER_GID),
                             capture_output=True, text=True, timeout=60, env=h.env())
        assert res.stdout.split() == ["denied", "denied"], res.stderr
    finally:
        procs.stop_all()
        shutil.rmtree(top, ignore_errors=True)


def test_without_the_group_the_other_uid_is_refused(users: Users, procs: Procs, h, tmp_path: Path) -> None:
    """Private mode (the default) with two uids: the daemon may accept the serving uid (--allow-uid)
    but cannot open its 0600 ring: rejected as unreadable, counted, and the daemon keeps serving."""
    top = world_dir(mode=0o1777)
    try:
        base = top / "sentinel"
        base.mkdir(mode=0o777)
        base.chmod(0o1777)
        port = h.free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        serving = "import sentinel_hooks, os; sentinel_hooks.step(); print(os.getpid())"
        res = subprocess.run(users.argv([users.python, "-c", serving], SERVING_UID, SERVING_GID),
                             env=h.env(SENTINEL_DIR=str(base)), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        (ring,) = (base / "rings").glob("*.ring")
        assert stat.S_IMODE(ring.stat().st_mode) == 0o600
        daemon_cmd = users.sentinel("daemon", "--dir", str(base), "--listen", f"127.0.0.1:{port}", "--no-nvml",
                                    "--allow-uid", str(SERVING_UID), "--poll-interval", "0.05")
        # The rings folder is the serving uid's (0700): give the daemon a way in, not a way to read.
        os.chmod(base / "rings", 0o755)
        procs.start_daemon(users.argv(daemon_cmd, DAEMON_UID, DAEMON_GID), tmp_path / "daemon.log", url, env=h.env())
        h.wait_for(lambda: h.samples(h.fetch(url), "sentinel_rings_rejected_total", reason="unreadable"),
                   timeout=20, what="the unreadable ring counted")
        assert h.samples(h.fetch(url), "sentinel_process_step") == []
    finally:
        procs.stop_all()
        shutil.rmtree(top, ignore_errors=True)
