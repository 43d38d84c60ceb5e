"""Adapters fail soft, one check at a time: a hook point missing in a framework version they do not
know, or drift found at run time, turns off the one check that needs it, with one warning and one
counted error; the other checks (the heartbeat above all) stay on, and the host runs on untouched.

This is the one place a stand-in framework is used: deliberately broken `vllm` and `sglang`
packages written to disk (so they go through the real import system and the real post-import
hooks). Everything else about the adapters is tested against the real vLLM (tests/test_vllm_*.py)
and the real SGLang source (tests/test_sglang_source.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.adapters import ENTRY_POINTS
from sentinel_hooks.adapters.base import ADAPTER_ERROR_EVENT

BROKEN_VLLM = {
    "vllm/__init__.py": "__version__ = '99.0.0'\n",
    "vllm/v1/__init__.py": "",
    "vllm/v1/worker/__init__.py": "",
    "vllm/v1/worker/worker_base.py": (
        "class WorkerWrapperBase:\n"
        "    def execute_model(self, x):\n"
        "        return ['ran', x]\n"
    ),
    # A release that renamed AttentionGroup: the adapter's main hook point is gone.
    "vllm/v1/worker/utils.py": "class KVCacheGroupRunner:\n    pass\n",
    "vllm/v1/engine/__init__.py": "",
    "vllm/v1/engine/core.py": (
        "class EngineCore:\n"
        "    def step(self):\n"
        "        return 'stepped'\n"
        "class EngineCoreProc(EngineCore):\n"
        "    def _process_input_queue(self):\n"
        "        return None\n"
        "    def has_work(self):\n"
        "        return False\n"
    ),
}

# AttentionGroup is there, but the metadata it is handed lacks a field the adapter reads.
DRIFTED_AT_RUN_TIME = dict(BROKEN_VLLM)
DRIFTED_AT_RUN_TIME["vllm/v1/worker/utils.py"] = (
    "import dataclasses\n"
    "@dataclasses.dataclass(eq=False)\n"
    "class AttentionGroup:\n"
    "    layer_names: list\n"
    "    kv_cache_spec: object = None\n"
    "    kv_cache_group_id: int = 0\n"
    "    kernel_block_size: object = None\n"
    "    def get_metadata_builder(self, ubatch_id=0):\n"
    "        return None\n"
    "    def build_metadata(self, common_attn_metadata, ubatch_idx=0, common_prefix_len=0):\n"
    "        return {'built_from': common_attn_metadata}\n"
)

PROGRAM = r"""
import json, sys
import sentinel_hooks, sentinel_hooks.inject
sentinel_hooks.inject.arm()
from sentinel_hooks.adapters import vllm as av
out = {"imported_by_arming": "vllm" in sys.modules}
import vllm.v1.worker.worker_base as wb
out["worker_patched_first"] = getattr(wb.WorkerWrapperBase.execute_model, "__sentinel_adapter__", None)
import vllm.v1.worker.utils as utils
if hasattr(utils, "AttentionGroup"):  # run-time drift: the first step finds a missing field
    out["built"] = utils.AttentionGroup(layer_names=["l0"]).build_metadata("common-metadata")
    out["built_again"] = utils.AttentionGroup(layer_names=["l0"]).build_metadata("again")
    out["build_still_patched"] = hasattr(utils.AttentionGroup.build_metadata, "__sentinel_adapter__")
import vllm.v1.engine.core as core
out["worker_patched"] = hasattr(wb.WorkerWrapperBase.execute_model, "__sentinel_adapter__")
out["core_patched"] = hasattr(core.EngineCore.step, "__sentinel_adapter__")
out["calls"] = [wb.WorkerWrapperBase().execute_model(5), wb.WorkerWrapperBase().execute_model(6), core.EngineCore().step()]
out["status"] = av.ADAPTER.status()
out["stats"] = sentinel_hooks.stats()
print(json.dumps(out))
"""

# SGLang 0.5.x whose TRT-LLM module binds canonicalize_stride to something not callable: its hook
# point fails after patching the backend's two methods, and must undo them; the heartbeat and
# FlashInfer stay.
BROKEN_SGLANG = {
    "sglang/__init__.py": "__version__ = '0.5.22'\n",
    "sglang/srt/__init__.py": "",
    "sglang/srt/model_executor/__init__.py": "",
    "sglang/srt/model_executor/model_runner.py": (
        "class ModelRunner:\n"
        "    def forward(self, forward_batch=None):\n"
        "        return 'forwarded'\n"
    ),
    "sglang/srt/layers/__init__.py": "",
    "sglang/srt/layers/attention/__init__.py": "",
    "sglang/srt/layers/attention/trtllm_mha_backend.py": (
        "canonicalize_stride = None\n"
        "class TRTLLMHAAttnBackend:\n"
        "    def init_forward_metadata(self, forward_batch):\n"
        "        return 'trt'\n"
        "    def init_forward_metadata_in_graph(self, forward_batch):\n"
        "        return 'trt_in_graph'\n"
    ),
    # A scheduler with on_idle but no run_batch: patching on_idle alone would leave the idle flag set.
    "sglang/srt/managers/__init__.py": "",
    "sglang/srt/managers/scheduler.py": "class Scheduler:\n    def on_idle(self):\n        return 'idle'\n",
    "sglang/srt/layers/attention/flashinfer_backend.py": (
        "class FlashInferAttnBackend:\n"
        "    def init_forward_metadata(self, forward_batch):\n"
        "        return 'metadata'\n"
        "    def init_forward_metadata_out_graph(self, forward_batch):\n"
        "        return 'out_graph'\n"
    ),
}

SGLANG_PROGRAM = r"""
import json
import sentinel_hooks, sentinel_hooks.inject
sentinel_hooks.inject.arm()
from sentinel_hooks.adapters import sglang as sa
import sglang.srt.layers.attention.trtllm_mha_backend as trt
import sglang.srt.layers.attention.flashinfer_backend as fi
import sglang.srt.model_executor.model_runner as mr
import sglang.srt.managers.scheduler as sched
out = {"on_idle_patched": hasattr(sched.Scheduler.on_idle, "__sentinel_adapter__"),
       "trt_patched": [hasattr(getattr(trt.TRTLLMHAAttnBackend, m), "__sentinel_adapter__")
                       for m in ("init_forward_metadata", "init_forward_metadata_in_graph")],"calls": [mr.ModelRunner().forward(None), mr.ModelRunner().forward(None),
                 fi.FlashInferAttnBackend().init_forward_metadata(None)],
       "runner_patched": hasattr(mr.ModelRunner.forward, "__sentinel_adapter__"),
       "flashinfer_patched": hasattr(fi.FlashInferAttnBackend.init_forward_metadata, "__sentinel_adapter__"),
       "status": sa.ADAPTER.status()}
print(json.dumps(out))
"""


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_broken(h, files: dict[str, str], program: str = PROGRAM, **env: str) -> tuple[dict, str]:
    fake = h.scratch / "fake"
    write_tree(fake, files)
    res = h.run_py(program, env=h.hooked_env(PYTHONPATH=str(fake), **env))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


def adapter_error_events(h) -> list[tuple[int, str]]:
    (ring,) = h.rings()
    reader = RingReader(str(ring))
    try:
        recs = reader.tail(writer_alive=False).records
        ev = recs[(recs["kind"] == rf.Kind.EVENT) & (recs["code"] == ADAPTER_ERROR_EVENT)]
        return [(int(r["a"]), reader.name(int(r["tag"]))) for r in ev]
    finally:
        reader.close()


def steps_in_ring(h) -> int:
    (ring,) = h.rings()
    reader = RingReader(str(ring))
    try:
        recs = reader.tail(writer_alive=False).records
        return int((recs["kind"] == rf.Kind.STEP).sum())
    finally:
        reader.close()


def test_missing_hook_point_turns_off_only_its_check(h):
    out, stderr = run_broken(h, BROKEN_VLLM)
    assert out["imported_by_arming"] is False
    assert out["worker_patched_first"] == "vllm"
    assert out["worker_patched"] and out["core_patched"]  # the heartbeats stay on
    assert out["calls"] == [["ran", 5], ["ran", 6], "stepped"]  # the host runs on untouched
    status = out["status"]
    assert status["active"] is True and status["disabled"] is None and status["errors"] == 1, stderr
    checks = status["checks"]
    assert checks["paged_kv"].startswith("off: hook point vllm.v1.worker.utils") and "AttentionGroup" in checks["paged_kv"]
    assert checks["heartbeat"] == "on (vllm.v1.worker.worker_base)"
    assert checks["engine_heartbeat"] == "on (vllm.v1.engine.core)"
    assert status["framework_version"] == "99.0.0" and status["version_check"] == "out of range"
    assert out["stats"]["errors"] == 1
    assert steps_in_ring(h) == 2  # one heartbeat per worker step, after the drift
    warnings = [line for line in stderr.splitlines() if "vllm adapter" in line]
    off = [line for line in warnings if "check paged_kv" in line]
    assert len(off) == 1 and "vllm.v1.worker.utils" in off[0] and "0.32.0" in off[0], stderr
    assert any("not a version it was verified against" in w and "out of its declared range (>= 0.30, < 0.34)" in w
               for w in warnings), stderr
    # the start-up line at the first heartbeat: the release, its verdict, what is on and off
    (startup,) = [w for w in warnings if "checks on:" in w]
    assert "vllm 99.0.0 (out of range; supported >= 0.30, < 0.34)" in startup, startup
    assert "heartbeat" in startup and "; off: paged_kv" in startup, startup
    # and the stand-in has no vllm.distributed for the identity: nothing else
    assert len([w for w in warnings if "parallel state for the identity" not in w]) == 3, stderr
    assert adapter_error_events(h) == [(1, "adapter:vllm")]  # counted in the ring for the daemon


def test_drift_found_at_run_time_turns_off_only_its_check(h):
    out, stderr = run_broken(h, DRIFTED_AT_RUN_TIME)
    # The first step's metadata lacks the fields the adapter reads: that call still returns
    # vLLM's own result, the paged-KV check turns itself off, and the heartbeats go on.
    assert out["built"] == {"built_from": "common-metadata"}
    assert out["built_again"] == {"built_from": "again"}
    assert out["build_still_patched"] and out["worker_patched"] and out["core_patched"]
    assert out["calls"] == [["ran", 5], ["ran", 6], "stepped"]
    status = out["status"]
    assert status["active"] is True and status["errors"] == 1
    checks = status["checks"]
    assert checks["paged_kv"].startswith("off: AttentionGroup.build_metadata") and "block_table_tensor" in \
        checks["paged_kv"], checks
    assert checks["heartbeat"].startswith("on")
    assert steps_in_ring(h) == 2
    assert len([line for line in stderr.splitlines() if "check paged_kv off" in line]) == 1, stderr
    assert adapter_error_events(h) == [(1, "adapter:vllm")]


def test_sglang_missing_backend_turns_off_only_its_check(h):
    out, stderr = run_broken(h, BROKEN_SGLANG, program=SGLANG_PROGRAM)
    assert out["calls"] == ["forwarded", "forwarded", "metadata"]
    assert out["runner_patched"] and out["flashinfer_patched"]
    status = out["status"]
    assert status["active"] is True and status["errors"] == 2 and status["version_check"] == "verified"
    checks = status["checks"]
    assert checks["paged_kv.trtllm"].startswith("off: hook point sglang.srt.layers.attention.trtllm_mha_backend")
    assert "canonicalize_stride is not callable" in checks["paged_kv.trtllm"], checks
    assert out["trt_patched"] == [False, False]  # patched, then undone with the point that failed
    assert checks["heartbeat"].startswith("on") and checks["paged_kv.flashinfer"].startswith("on"), checks
    # A hook point that fails half-way is undone whole: on_idle is not left patched without run_batch.
    assert checks["idle"].startswith("off: hook point sglang.srt.managers.scheduler") and not out["on_idle_patched"]
    assert steps_in_ring(h) == 2
    (startup,) = [line for line in stderr.splitlines() if "checks on:" in line]
    assert "sglang 0.5.22 (verified; supported >= 0.5.20, < 0.5.24)" in startup, startup
    assert adapter_error_events(h) == [(1, "adapter:sglang"), (1, "adapter:sglang")]


def test_adapters_can_be_switched_off(h):
    out, stderr = run_broken(h, BROKEN_VLLM, SENTINEL_ADAPTERS="none")
    assert out["worker_patched_first"] is None and not out["core_patched"]
    assert out["status"]["instrumented"] is False and out["status"]["errors"] == 0
    assert "vllm adapter" not in stderr
    assert h.rings() == []  # nothing happened, so nothing was written


def test_sentinel_run_offers_the_plugin_entry_points(h):
    """The copied hooks carry a dist-info: a framework finds Sentinel's entry points on PYTHONPATH."""
    code = (
        "import importlib.metadata as md, json, os\n"
        "eps = {g: sorted((e.name, e.value, str(e.dist._path)) for e in md.entry_points(group=g))"
        f" for g in {sorted(ENTRY_POINTS)!r}}}\n"
        "print(json.dumps(eps))\n"
    )
    res = h.sentinel_run(code)
    assert res.returncode == 0, res.stderr
    eps = json.loads(res.stdout.strip().splitlines()[-1])
    hooks_root = os.path.realpath(os.path.join(h.dir, "hooks"))
    for group, wanted in ENTRY_POINTS.items():
        ours = [(name, value) for name, value, path in eps[group] if os.path.realpath(path).startswith(hooks_root)]
        assert ours == sorted(wanted.items()), eps


def test_importing_the_adapters_imports_no_framework():
    code = ("import sys, sentinel_hooks.adapters as a, sentinel_hooks.adapters.vllm, sentinel_hooks.adapters.sglang\n"
            "a.arm()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'sglang', 'torch')))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": os.environ.get("PATH", ""), "SENTINEL_DIR": "/nonexistent-sentinel"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_doctor_reads_the_installed_release_and_says_which_checks_are_on(h):
    """`sentinel doctor --site DIR`: the release found there (its dist-info), the verdict against the
    declared range, and the checks whose names its source lacks, without importing it."""
    site = h.scratch / "site"
    write_tree(site, BROKEN_VLLM)
    write_tree(site, {"vllm-99.0.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: vllm\nVersion: 99.0.0\n",
                      "vllm-99.0.0.dist-info/RECORD": ""})
    res = subprocess.run([sys.executable, "-m", "sentinel", "doctor", "--dir", str(h.scratch / "d"), "--site", str(site),
                          "--json"], capture_output=True, text=True, timeout=120)
    rows = {r["check"]: r for r in json.loads(res.stdout)}
    vllm = rows["vllm"]
    assert vllm["status"] == "warn", vllm
    assert vllm["detail"].startswith("vllm 99.0.0 (out of range; the adapter supports >= 0.30, < 0.34)"), vllm
    assert "checks on: " in vllm["detail"] and "heartbeat" in vllm["detail"].split("; off:")[0], vllm
    off = vllm["detail"].split("; off: ")[1]
    assert "paged_kv (missing vllm.v1.worker.utils: AttentionGroup." in off and "collectives (missing" in off, off
    assert "sglang" not in rows  # not installed there
