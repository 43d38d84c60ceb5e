"""A torch.distributed (gloo) job for the hang tests: every rank steps and all-reduces; one rank
(the straggler) stops joining at collective HANG_AT, by sleeping or by dying.

    python gloo_ranks.py PORT STEPS HANG_AT STRAGGLER MODE      (RANK and WORLD_SIZE from the env)
MODE: sleep (a stuck host loop) | die (SIGKILL) | none (no hang) | slow (one legit 4 s step at
HANG_AT: everyone waits, then all go on) | subgroup (ranks 0 and 1 also all-reduce in a subgroup;
the straggler stops joining that subgroup's collective at HANG_AT) | crossgroup (every rank all-reduces
in the world group, then ranks 1 and 2 in a subgroup; the straggler, rank 2, stops before the
subgroup's collective at HANG_AT: rank 1 waits there, rank 0 in the next world all-reduce) | ahead
(at HANG_AT the straggler skips its all-reduce and runs the step's next collective, an all-gather of
another size: one collective ahead, a desync; the others wait in the all-reduce)
"""

import datetime
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import sentinel_hooks

port, steps, hang_at, straggler, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
# Under torchrun the rendezvous comes from its environment; started alone, from PORT.
init = "env://" if "TORCHELASTIC_RUN_ID" in os.environ else f"tcp://127.0.0.1:{port}"
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=float(os.environ.get("GLOO_TIMEOUT_S", "120"))))
x = torch.ones(16)
sub = dist.new_group([0, 1]) if mode == "subgroup" else dist.new_group([1, 2]) if mode == "crossgroup" else None
for i in range(1, steps + 1):
    sentinel_hooks.step()
    if mode == "slow" and i == hang_at and rank == straggler:
        time.sleep(4.0)  # a long prefill: slow, not hung
    elif mode in ("sleep", "die") and rank == straggler and i == hang_at:
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(3600)
    if mode == "subgroup":
        if rank in (0, 1):
            if rank == straggler and i == hang_at:
                time.sleep(3600)
            dist.all_reduce(x, group=sub)
        continue
    if mode == "ahead" and rank == straggler and i == hang_at:
        dist.all_gather_into_tensor(torch.empty(16 * world), torch.ones(16))  # skipped the all-reduce
        time.sleep(3600)
    dist.all_reduce(x)
    if mode == "ahead" and i == hang_at:
        dist.all_gather_into_tensor(torch.empty(16 * world), torch.ones(16))
    if mode == "crossgroup" and rank in (1, 2):
        if rank == straggler and i == hang_at:
            time.sleep(3600)
        dist.all_reduce(x, group=sub)
    time.sleep(0.02)
print("done", rank, flush=True)
dist.destroy_process_group()
