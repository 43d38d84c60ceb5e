"""The SGLang adapter against the real sglang 0.5.23 package: its source, and what imports on CPU.

SGLang's attention backends, pools and runners need CUDA kernels (or torchvision) to import, so
there is no engine to run here. Instead:

- every name the adapter relies on (``RELIES_ON``) resolves in the wheel's source (downloaded by
  `make vllm-env`), and so do the facts its checks depend on (the methods it wraps are the
  concrete backends' own; the SWA allocator's ``size`` is a property, the minimum of the two
  pools; ``canonicalize_stride``'s only by-name importer is the TRT-LLM backend);
- in a venv with the real package on CPU torch: SGLang's own plugin loader (``load_plugins``)
  finds Sentinel's ``sglang.srt.plugins`` entry point in the dist-info that `sentinel
  install-hooks` writes, and honours ``SGLANG_PLUGINS``; the real ``canonicalize_stride`` is
  observed (the degenerate stride recorded, SGLang's repair still returned) and restored.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.adapters import ENTRY_POINTS
from sentinel_hooks.adapters import sglang as sglang_adapter

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from vllm_sglang_source import SourceIndex  # noqa: E402

SGLANG_VERSION = os.environ.get("SGLANG_VERSION", "0.5.23")
CACHE = Path(os.environ.get("SENTINEL_CACHE", Path.home() / ".cache" / "sentinel"))
SGLANG_CACHE = Path(os.environ.get("SGLANG_CACHE", CACHE / f"sglang-{SGLANG_VERSION}"))
SGLANG_VENV = Path(os.environ.get("SGLANG_VENV", CACHE / f"sglang-venv-{SGLANG_VERSION}"))
SGLANG_PY = SGLANG_VENV / "bin" / "python"
WHEELS = sorted(SGLANG_CACHE.glob(f"sglang-{SGLANG_VERSION}-*.whl"))
VENV_READY = (SGLANG_VENV / f".sentinel-sglang-{SGLANG_VERSION}").is_file() and SGLANG_PY.exists()
REASON = "run `make vllm-env` (`make test` does it)"

needs_wheel = pytest.mark.skipif(not WHEELS, reason=f"no sglang {SGLANG_VERSION} wheel in {SGLANG_CACHE}: {REASON}")
needs_venv = pytest.mark.skipif(not VENV_READY, reason=f"no SGLang venv at {SGLANG_VENV}: {REASON}")


@pytest.fixture(scope="module")
def source() -> SourceIndex:
    return SourceIndex.from_wheel(WHEELS[0], "sglang")


@needs_wheel
def test_every_name_the_adapter_uses_exists_in_sglang(source):
    missing = [f"{module}: {dotted}" for module, dotted in sglang_adapter.RELIES_ON if not source.has(module, dotted)]
    assert missing == []
    assert source.literal("sglang._version", "__version__") == SGLANG_VERSION
    assert SGLANG_VERSION in sglang_adapter.ADAPTER.verified_versions
    assert source.literal("sglang.srt.plugins", "GENERAL_PLUGINS_GROUP") == "sglang.srt.plugins"
    assert "sglang.srt.plugins" in ENTRY_POINTS
    # The checker is not vacuous.
    for module, dotted in [(sglang_adapter.TRTLLM, "TRTLLMHAAttnBackend.init_forward_metadata_capture_cuda_graph"),
                           (sglang_adapter.TRTLLM, "TRTLLMMHAMetadata.block_table"),
                           ("sglang.srt.model_executor.forward_batch_info", "ForwardBatch.original_batch_size")]:
        assert not source.has(module, dotted), dotted


def _class(source: SourceIndex, module: str, name: str) -> ast.ClassDef:
    node = source.lookup(module, name)
    assert isinstance(node, ast.ClassDef)
    return node


def _own_methods(cls: ast.ClassDef) -> set[str]:
    return {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@needs_wheel
def test_wrapped_methods_are_the_backends_own(source):
    """A patch reaches only the class it names: each wrapped method must be defined right there."""
    trt = _class(source, sglang_adapter.TRTLLM, "TRTLLMHAAttnBackend")
    assert {"init_forward_metadata", "init_forward_metadata_in_graph", "init_forward_metadata_out_graph"} <= \
        _own_methods(trt)
    fi = _class(source, sglang_adapter.FLASHINFER, "FlashInferAttnBackend")
    assert {"init_forward_metadata", "init_forward_metadata_out_graph"} <= _own_methods(fi)
    assert "forward" in _own_methods(_class(source, sglang_adapter.RUNNER, "ModelRunner"))
    # TRT-LLM's out_graph only selects the static metadata (why the adapter probes in_graph).
    out_graph = next(n for n in trt.body if getattr(n, "name", "") == "init_forward_metadata_out_graph")
    assert any(isinstance(n, ast.Attribute) and n.attr == "decode_cuda_graph_metadata" for n in ast.walk(out_graph))


@needs_wheel
def test_swa_allocator_size_is_the_minimum_so_the_adapter_reads_size_full_and_size_swa(source):
    cls = _class(source, "sglang.srt.mem_cache.allocator.swa", "SWATokenToKVPoolAllocator")
    props = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)
             and any(getattr(d, "id", None) == "property" for d in n.decorator_list)}
    assert {"size", "size_full", "size_swa"} <= set(props)
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "min" for n in ast.walk(props["size"]))


@needs_wheel
def test_canonicalize_stride_importers_are_known(source):
    importers = set()
    for module, text in source.files.items():
        if sglang_adapter.CANONICALIZE not in text or module.startswith("sglang.test"):
            continue
        for node in ast.walk(source.tree(module)):
            if isinstance(node, ast.ImportFrom) and any(a.name == sglang_adapter.CANONICALIZE for a in node.names):
                importers.add(module)
    assert importers == {sglang_adapter.TRTLLM}, importers


PROGRAM = r"""
import json, os, sys
out = {}
import sentinel_hooks.inject as inject
out["armed_before"] = inject.armed
from sglang.srt.plugins import load_plugins
load_plugins()   # SGLang's own loader: entry points from importlib.metadata, SGLANG_PLUGINS filter
out["armed_after"] = inject.armed
from sentinel_hooks.adapters import sglang as sa
out["status_after_plugins"] = sa.ADAPTER.status()
if inject.armed:
    import torch
    from sglang.kernels.ops.attention import utils
    out["patched"] = getattr(utils.canonicalize_stride, "__sentinel_adapter__", None)
    # A paged KV view with one KV head, as TRT-LLM's _reshape_paged_kv_cache builds it:
    # [num_pages, 1, page_size, head_dim] with the size-1 dim's stride equal to the next one's.
    k = torch.zeros(704, 1, 128).view(11, 64, 1, 128).permute(0, 2, 1, 3)
    out["strides_in"] = list(k.stride())
    out["strides_out"] = list(utils.canonicalize_stride(k).stride())
    original = utils.canonicalize_stride.__sentinel_original__
    sa.ADAPTER.uninstrument()
    out["restored"] = utils.canonicalize_stride is original
print(json.dumps(out))
"""


def _run(h, hooks: Path, **env: str) -> dict:
    res = h.run([str(SGLANG_PY), "-c", PROGRAM], timeout=180,
                env=h.hooked_env(PYTHONPATH=str(hooks), SENTINEL_COLLECTIVES="0", **env))
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_venv
def test_sglang_plugin_loader_arms_sentinel_and_stride_is_observed(h):
    hooks = h.scratch / "hooks"
    res = h.run([h.sentinel, "install-hooks", str(hooks)], env=h.env())
    assert res.returncode == 0, res.stderr
    out = _run(h, hooks, SGLANG_PLUGINS="sentinel")
    assert out["armed_before"] is False and out["armed_after"] is True  # armed by SGLang's loader
    status = out["status_after_plugins"]
    assert status["active"] and status["framework_version"] == SGLANG_VERSION and status["errors"] == 0
    assert status["version_check"] == "verified"
    assert out["patched"] == "sglang"
    assert out["strides_in"] == [8192, 128, 128, 1] and out["strides_out"] == [8192, 8192, 128, 1]
    assert out["restored"] is True
    (ring,) = h.rings()
    reader = RingReader(str(ring))
    try:
        assert reader.header["framework"] == "sglang" and reader.header["framework_version"] == SGLANG_VERSION
        recs = reader.tail(writer_alive=False).records
        probes = recs[recs["kind"] == rf.Kind.PROBE]
        # dim 1 (size 1) had stride 128 where 64 * 128 = 8192 is canonical
        assert [(int(p["code"]), int(p["b"]), int(p["c"]), int(p["aux"]), reader.name(int(p["tag"])))
                for p in probes] == [(rf.Check.DEGENERATE_STRIDE, 1, 128, 8192, "sglang.canonicalize_stride")]
    finally:
        reader.close()


@needs_venv
def test_sglang_plugins_filter_leaves_sentinel_out(h):
    hooks = h.scratch / "hooks"
    assert h.run([h.sentinel, "install-hooks", str(hooks)], env=h.env()).returncode == 0
    out = _run(h, hooks, SGLANG_PLUGINS="someone_else")
    assert out["armed_after"] is False and out["status_after_plugins"]["instrumented"] is False
    assert h.rings() == []
