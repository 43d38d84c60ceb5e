"""Adapters fail soft: a hook point missing in a framework version they do not know disables the
adapter with one warning and one counted error, undoes its patches, and the host runs on untouched.

This is the one place a stand-in framework is used: a deliberately broken `vllm` package written
to disk (so it goes through the real import system and the real post-import hooks). Everything
else about the adapters is tested against the real vLLM (tests/test_vllm_*.py) and the real
SGLang source (tests/test_sglang_source.py).
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
    "vllm/v1/engine/core.py": "class EngineCore:\n    def step(self):\n        return 'stepped'\n",
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
    out["build_restored"] = not hasattr(utils.AttentionGroup.build_metadata, "__sentinel_adapter__")
import vllm.v1.engine.core as core
out["worker_restored"] = not hasattr(wb.WorkerWrapperBase.execute_model, "__sentinel_adapter__")
out["core_patched"] = hasattr(core.EngineCore.step, "__sentinel_adapter__")
out["calls"] = [wb.WorkerWrapperBase().execute_model(5), core.EngineCore().step()]
out["status"] = av.ADAPTER.status()
out["stats"] = sentinel_hooks.stats()
print(json.dumps(out))
"""


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_broken(h, files: dict[str, str], **env: str) -> tuple[dict, str]:
    fake = h.scratch / "fake"
    write_tree(fake, files)
    res = h.run_py(PROGRAM, env=h.hooked_env(PYTHONPATH=str(fake), **env))
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


def test_missing_hook_point_disables_adapter_and_restores_patches(h):
    out, stderr = run_broken(h, BROKEN_VLLM)
    assert out["imported_by_arming"] is False
    assert out["worker_patched_first"] == "vllm"  # patched when imported, before the drift showed
    assert out["worker_restored"] and not out["core_patched"]  # undone, and nothing patched after
    assert out["calls"] == [["ran", 5], "stepped"]  # the host runs on untouched
    status = out["status"]
    assert status["active"] is False and status["errors"] == 1
    assert "AttentionGroup" in status["disabled"] and status["framework_version"] == "99.0.0"
    assert status["version_check"] == "out of range"  # checked and shown; the drift is what disabled it
    assert out["stats"]["errors"] == 1
    warnings = [line for line in stderr.splitlines() if "vllm adapter" in line]
    disabled = [line for line in warnings if "disabled" in line]
    assert len(disabled) == 1, stderr
    assert "vllm.v1.worker.utils" in disabled[0] and "verified against 0.32.0" in disabled[0]
    # besides it, only the one-line note that 99.0.0 is not a verified version, nor in the range
    assert len(warnings) == 2 and any("not a version it was verified against" in w for w in warnings), stderr
    assert any("out of its declared range (>= 0.32, < 0.34)" in w for w in warnings), stderr
    assert adapter_error_events(h) == [(1, "adapter:vllm")]  # counted in the ring for the daemon


def test_drift_found_at_run_time_disables_adapter_mid_step(h):
    out, stderr = run_broken(h, DRIFTED_AT_RUN_TIME)
    # The first step's metadata lacks the fields the adapter reads: that call still returns
    # vLLM's own result, the adapter switches itself off and every patch is undone.
    assert out["built"] == {"built_from": "common-metadata"}
    assert out["built_again"] == {"built_from": "again"}
    assert out["build_restored"] and out["worker_restored"] and not out["core_patched"]
    assert out["calls"] == [["ran", 5], "stepped"]
    status = out["status"]
    assert status["active"] is False and status["errors"] == 1
    assert "AttentionGroup.build_metadata" in status["disabled"] and "block_table_tensor" in status["disabled"]
    assert len([line for line in stderr.splitlines() if "disabled" in line]) == 1, stderr
    assert adapter_error_events(h) == [(1, "adapter:vllm")]


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
