"""The reference NCCL all_gather hang on 2 GPUs, under `sentinel run`: how long Sentinel takes to
name the culprit rank, beside how long PyTorch's watchdog takes (process-group timeout 60 s).

    python tests/gpu/nccl_hang.py OUTDIR        (on a machine with 2 GPUs; about 90 s)

Rank 1 stops joining collective #6 (it sleeps); rank 0 enqueues all_gather_into_tensor #6, which
returns at once, and blocks later at .item(). Writes OUTDIR/nccl_hang.json and prints a table.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO, os.path.join(REPO, "hooks")]

from sentinel.daemon.loop import Daemon, DaemonConfig  # noqa: E402
from sentinel.triage.hangs import HangConfig  # noqa: E402

RANK_PROGRAM = r"""
import datetime, os, time, torch, torch.distributed as dist
import sentinel_hooks as sh
rank = int(os.environ["RANK"])
torch.cuda.set_device(rank)
dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=60))
x = torch.ones(1 << 20, device="cuda")
out = torch.empty(2 << 20, device="cuda")
for i in range(1, 7):
    sh.step()
    if rank == 1 and i == 6:
        time.sleep(150)          # the straggler never joins collective #6
    t0 = time.time()
    dist.all_gather_into_tensor(out, x)
    if i == 6:
        print(f"rank {rank} enqueue returned after {time.time() - t0:.3f}s", flush=True)
    out.sum().item()             # the waiting rank blocks here, not in the collective
    time.sleep(0.05)
"""


def main(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="sentinel-nccl-")
    prog = os.path.join(base, "ranks.py")
    with open(prog, "w") as f:
        f.write(RANK_PROGRAM)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCH_NCCL_ASYNC_ERROR_HANDLING="1",
               TORCH_FR_BUFFER_SIZE="2000", TORCH_NCCL_DUMP_ON_TIMEOUT="1",  # Flight Recorder, dumped at the timeout
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "hooks"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "sentinel", "run", "--dir", base, "--", sys.executable, "-m",
           "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533", prog]
    log_path = os.path.join(out_dir, "nccl_hang_ranks.log")
    log = open(log_path, "w")
    job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0.2, hang=HangConfig(floor_s=5.0)))
    t_enq = t_named = t_watchdog = None
    hang = None
    t_start = time.time()
    try:
        while time.time() - t_start < 150:
            d.poll_once()
            if t_enq is None:
                for s in d.states.values():
                    g = s.groups.get("0")
                    if s.identity.get("rank") == 0 and g is not None and g.last_enqueued >= 6:
                        t_enq = g.last_enqueued_ns / 1e9
            if hang is None and d.hangs.open:
                hang = next(iter(d.hangs.open.values()))
                t_named = time.time()
                print(f"named: {hang.summary()}", flush=True)
            if t_watchdog is None:
                text = open(log_path, errors="replace").read()
                if re.search(r"Watchdog caught collective operation timeout", text):
                    t_watchdog = time.time()
                    print("PyTorch watchdog fired", flush=True)
            if hang is not None and (t_watchdog is not None or job.poll() is not None):
                if d.hangs.evidence.get(hang.key, {}).get("flight_recorder") or time.time() - (t_watchdog or 0) > 15:
                    break
            time.sleep(0.1)
        d.hangs.store_gathered()
        time.sleep(2)
        d.hangs.store_gathered()
    finally:
        job.kill()
        subprocess.run(["pkill", "-9", "-f", prog])
        d.close()
        log.close()
    ev = next(iter(d.hangs.evidence.values()), {})
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "sentinel_named_s": round(t_named - t_enq, 2) if t_named and t_enq else None,
        "pytorch_watchdog_s": round(t_watchdog - t_enq, 2) if t_watchdog and t_enq else None,
        "pg_timeout_s": 60,
        "culprits": [c.__dict__ for c in hang.culprits] if hang else None,
        "waiting": list(hang.waiting) if hang else None,
        "seq": hang.seq if hang else None, "op": hang.op if hang else None,
        "gpus": ev.get("gpus"), "stacks": ev.get("stacks"), "flight_recorder": ev.get("flight_recorder"),
    }
    with open(os.path.join(out_dir, "nccl_hang.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    print("\n| what | seconds after rank 0 enqueued #6 |\n|---|---|")
    print(f"| Sentinel names the culprit | {result['sentinel_named_s']} |")
    print(f"| PyTorch watchdog (pg timeout 60 s) | {result['pytorch_watchdog_s']} |")
    print("| PyTorch watchdog, default timeout | 600 (on paper) |")
    print(json.dumps({k: result[k] for k in ("culprits", "waiting", "seq", "op", "gpus", "flight_recorder")}, default=str))
    ok = result["culprits"] and [c["rank"] for c in result["culprits"]] == [1] and (result["sentinel_named_s"] or 99) <= 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
