"""Collective hangs inside CUDA graphs on 2 GPUs, under `sentinel run`: two ranks replay a decode-like
step (8 x (matmul, all-reduce)) captured in one CUDA graph; the daemon runs here, with its default
thresholds, and we time how long it takes to name the culprit.

    python tests/gpu/graph_hang.py OUTDIR [SCENARIO BACKEND]... [--healthy-s S]

SCENARIO:
  stall      rank 1's host stops before replay AT (it sleeps): rank 0's GPU waits in the all-reduce
  fault      rank 1's replay AT faults (a paged gather reads page 2**30: an illegal address), it dies
  gpu_stall  rank 1's GPU is stuck in a 45 s kernel before replay AT while its host goes on enqueueing
             replays: only the device words (what each GPU reached) tell the ranks apart
  healthy    S seconds of replays with 0-20 ms of host jitter per step: no hang may be named
BACKEND:
  torch      torch.distributed's NCCL all_reduce, captured
  cupy       CuPy's NCCL binding (a communicator of its own, as vLLM's PyNccl makes) behind a stand-in
             for vLLM's GroupCoordinator._all_reduce_out_place, traced as the vLLM adapter traces it

Each rank is its own process (as in a serving engine, one rank's death does not kill the other by
itself). Writes OUTDIR/graph_hang.json; exit status 0 when every scenario met its goal (culprit rank 1
named within 10 s; no hang in the healthy run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO, os.path.join(REPO, "hooks")]

from sentinel.daemon.loop import Daemon, DaemonConfig  # noqa: E402

AT = 40
GOAL_S = 10.0

RANK_PROGRAM = r"""
import datetime, os, random, sys, time, torch, torch.distributed as dist
import sentinel_hooks as sh
from paged_attention import paged_gather  # bench/: a paged gather whose page index we control
from sentinel_hooks import collectives
scenario, backend, at, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
duration = float(sys.argv[5])
rank = int(os.environ["RANK"])
torch.cuda.set_device(rank)
dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=300))
collectives.install()
torch.manual_seed(0)
ws = [torch.randn(1024, 1024, device="cuda") / 32 for _ in range(8)]
table = torch.zeros(4, dtype=torch.int32, device="cuda")  # page indices; 2**30 is far past the cache
cache = torch.randn(64 * 64, device="cuda")
gathered = torch.empty(4 * 64, device="cuda")
static = torch.randn(16, 1024, device="cuda")

if backend == "cupy":
    import cupy
    from cupy.cuda import nccl
    uid = [nccl.get_unique_id() if rank == 0 else None]
    dist.broadcast_object_list(uid, src=0)
    with cupy.cuda.Device(rank):
        comm = nccl.NcclCommunicator(2, uid[0], rank)

    class Coordinator:  # the shape of vLLM's GroupCoordinator, over a non-torch NCCL communicator
        def __init__(self):
            self.unique_name, self.ranks, self.world_size, self.rank_in_group, self.rank = "tp:0", [0, 1], 2, rank, rank

        def _all_reduce_out_place(self, t):
            out = torch.empty_like(t)
            comm.allReduce(t.data_ptr(), out.data_ptr(), t.numel(), nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                           torch.cuda.current_stream().cuda_stream)
            return out

    Coordinator._all_reduce_out_place = collectives.engine_collective(Coordinator._all_reduce_out_place, "all_reduce")
    tp = Coordinator()
    all_reduce = tp._all_reduce_out_place
else:
    def all_reduce(t):
        dist.all_reduce(t)
        return t

def step(y):
    for i, w in enumerate(ws):
        if i == 4:
            paged_gather[(4,)](table, cache, gathered, PAGE=64)  # an illegal address once table[0] is 2**30
        y = torch.tanh(y @ w)
        y = all_reduce(y)
    return y

for _ in range(3):  # eager warm-up (communicators, Triton kernels, device words)
    step(static)
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    step(static)
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    out = step(static)
torch.cuda.synchronize()
print(f"rank {rank} captured", flush=True)
replays = int(duration * 95) if scenario == "healthy" else at + 400  # ~10.5 ms a step with the jitter
i = 0
try:
    while i < replays:
        i += 1
        sh.step()
        if rank == 1 and i == at and scenario != "healthy":
            with open(os.path.join(base, "stall_at"), "w") as f:
                f.write(repr(time.time()))
            if scenario == "stall":
                time.sleep(3600)
            elif scenario == "fault":
                table.fill_(2**30)
            elif scenario == "gpu_stall":
                torch.cuda._sleep(int(45 * 1.98e9))
        graph.replay()
        if i % 8 == 0:
            out.sum().item()  # the host reads a result now and then, as a server reads sampled tokens
        if scenario == "healthy":
            time.sleep(random.uniform(0, 0.02))
    torch.cuda.synchronize()
except Exception as exc:
    print(f"rank {rank} failed: {exc}", flush=True)
    os._exit(1)  # its CUDA context is dead: exit now, as a server's worker does
print(f"rank {rank} done after {i} replays", flush=True)
from sentinel_hooks import collectives, mapped  # noqa: E402

w = mapped._words
seen = graph.__dict__.get("_sentinel_collectives", {})
print(f"rank {rank} device words ({mapped.mode()}):", [int(w.host[k]) for k in range(w._next)] if w else None,
      "host seq:", {g.name: g.seq for g in collectives._by_name.values()},
      "captured:", {g.name: (n, None if slot < 0 else int(w.inc_host[slot])) for g, (n, *_, slot) in seen.items()},
      flush=True)
mapped.copy_out()  # pinned mode: the words' last values into the ring (os._exit skips the exit hook)
from sentinel_hooks import runtime
runtime.writer().close(clean_exit=True)  # the ring says "exited"; NCCL's teardown at exit can block
os._exit(0)
"""


def run_scenario(scenario: str, backend: str, out_dir: str, duration_s: float = 0.0) -> dict:
    """Run one scenario (see the module docstring); returns what the daemon named and when."""
    base = tempfile.mkdtemp(prefix=f"sentinel-graph-{scenario}-")
    prog = os.path.join(base, "ranks.py")
    with open(prog, "w") as f:
        f.write(RANK_PROGRAM)
    port = str(29600 + hash((scenario, backend)) % 300)
    procs, logs = [], []
    for rank in (0, 1):
        env = dict(os.environ, PYTHONUNBUFFERED="1", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SENTINEL_COREDUMP="0",
                   PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "hooks"), os.path.join(REPO, "bench"),
                                               os.environ.get("PYTHONPATH", "")]))
        log = open(os.path.join(out_dir, f"graph_{scenario}_{backend}_rank{rank}.log"), "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "sentinel", "run", "--dir", base, "--", sys.executable, prog, scenario, backend,
             str(AT), base, str(duration_s)], env=env, stdout=log, stderr=subprocess.STDOUT))
    d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0.2))
    hangs_seen: list = []
    named_at = None
    hang = None
    t0 = time.time()
    limit = duration_s + 120 if scenario == "healthy" else 150
    try:
        while time.time() - t0 < limit:
            d.poll_once()
            for h in d.hangs.open.values():
                if h.key not in {x.key for x in hangs_seen}:
                    hangs_seen.append(h)
                    print(f"[{scenario}/{backend}] named: {h.summary()}", flush=True)
                if named_at is None and any(c.rank == 1 for c in h.root_culprits):
                    named_at, hang = time.time(), h
            if scenario == "healthy" and all(p.poll() is not None for p in procs):
                d.poll_once()  # the device words' last values, written at exit
                break
            if named_at is not None and time.time() - named_at > 2:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["pkill", "-9", "-f", prog])
        for log in logs:
            log.close()
    gpu_entered = {str(s.identity.get("rank")): {n: g.gpu_entered for n, g in s.groups.items()}
                   for s in d.states.values()}
    enqueued = {str(s.identity.get("rank")): {n: g.last_enqueued for n, g in s.groups.items()}
                for s in d.states.values()}
    d.close()
    stall_at = None
    try:
        with open(os.path.join(base, "stall_at")) as f:
            stall_at = float(f.read())
    except OSError:
        pass
    result = {
        "scenario": scenario, "backend": backend,
        "named_s": round(named_at - stall_at, 2) if named_at and stall_at else None,
        "hangs_named": len(hangs_seen),
        "culprits": [c.__dict__ for c in hang.culprits] if hang else None,
        "victims": list(hang.victims) if hang else None, "waiting": list(hang.waiting) if hang else None,
        "group": hang.group if hang else None, "seq": hang.seq if hang else None,
        "gpu_entered": gpu_entered, "last_enqueued": enqueued,
        "exit_codes": [p.returncode for p in procs],
    }
    if scenario == "healthy":
        result["healthy_s"] = duration_s
        # Every replay done: each GPU reached every collective its host enqueued, no more, no fewer
        result["ok"] = (not hangs_seen and all(p.returncode == 0 for p in procs) and gpu_entered == enqueued
                        and all(enqueued.values()))
    else:
        result["ok"] = result["named_s"] is not None and result["named_s"] <= GOAL_S
    return result


def main(argv: list[str]) -> int:
    out_dir = argv[0] if argv else "."
    os.makedirs(out_dir, exist_ok=True)
    healthy_s = 300.0
    rest = argv[1:]
    if "--healthy-s" in rest:
        k = rest.index("--healthy-s")
        healthy_s = float(rest[k + 1])
        del rest[k:k + 2]
    pairs = list(zip(rest[::2], rest[1::2])) or [
        ("stall", "torch"), ("stall", "cupy"), ("fault", "torch"), ("fault", "cupy"), ("gpu_stall", "torch"),
        ("healthy", "torch")]
    results = []
    for scenario, backend in pairs:
        r = run_scenario(scenario, backend, out_dir, healthy_s if scenario == "healthy" else 0.0)
        print(json.dumps(r, default=str), flush=True)
        results.append(r)
    with open(os.path.join(out_dir, "graph_hang.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "results": results}, f, indent=2, default=str)
    print("\n| scenario | backend | culprit named after (s) | culprits | hangs named |\n|---|---|---|---|---|")
    for r in results:
        who = ", ".join(f"rank {c['rank']} ({c['reason']})" for c in r["culprits"] or []) or "-"
        print(f"| {r['scenario']} | {r['backend']} | {r['named_s']} | {who} | {r['hangs_named']} |")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
