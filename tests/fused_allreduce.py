"""FlashInfer's fused all-reduce + RMSNorm on CPU, for the engine adapters' tests: FlashInfer has no
CPU build (its kernels are CUDA IPC), so a stand-in package takes its name and all-reduces over the
gloo group of the workspace it is handed. The engine side of each test is real (vLLM's or SGLang's
own groups). ``run_ranks`` runs a program as two ranks under `sentinel run` with the stand-in on the
path and returns what each rank's ring recorded. FlashInfer is not the engine's package: only the
engine's own adapter hooks it, and the ring keeps naming that engine (every adapter is armed in every
process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

STANDIN = '''
import torch.distributed as dist


def allreduce_fusion(input, workspace=None, pattern=None, **kwargs):
    dist.all_reduce(input, group=workspace.cpu_group)


def create_allreduce_fusion_workspace(*args, **kwargs):
    raise NotImplementedError("stand-in")
'''


def run_ranks(h: Any, python: Path, program: str, env: dict[str, str],
              framework: str) -> list[list[tuple[str, int, int]]]:
    """Run ``program`` (``python -c``) as ranks 0 and 1 (env RANK, PORT) under `sentinel run`, with
    the FlashInfer stand-in first on PYTHONPATH; each must print OK and its ring must name
    ``framework``. Per rank, its all-reduce enqueues in ring order, as (group tag name, sequence
    number, elements)."""
    standin = h.scratch / "flashinfer_standin"
    (standin / "flashinfer" / "comm").mkdir(parents=True, exist_ok=True)
    (standin / "flashinfer" / "__init__.py").write_text("")
    (standin / "flashinfer" / "comm" / "__init__.py").write_text(STANDIN)
    port = str(h.free_port())
    ranks = [h.spawn([h.sentinel, "run", "--dir", h.dir, "--", str(python), "-c", program],
                     env={**env, "PORT": port, "RANK": str(r), "PYTHONPATH": str(standin)}) for r in (0, 1)]
    for p in ranks:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and b"OK" in out, err.decode()[-3000:]
    calls = []
    for p in ranks:
        ring = next(r for r in h.rings() if f".{p.pid}." in r.name)
        reader = RingReader(str(ring))
        try:
            assert reader.header["framework"] == framework, reader.header
            recs = reader.tail(writer_alive=False).records
            enq = recs[(recs["kind"] == rf.Kind.COLLECTIVE_ENQUEUE) & (recs["code"] == rf.COLLECTIVE_OPS["all_reduce"])]
            calls.append([(reader.name(int(t)), int(a), int(b)) for t, a, b in zip(enq["tag"], enq["a"], enq["b"])])
        finally:
            reader.close()
    return calls
