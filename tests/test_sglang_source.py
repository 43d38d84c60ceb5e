"""The SGLang adapter against the real sglang packages: the source of 0.5.20-0.5.23, and what of
0.5.23 imports on CPU.

SGLang's attention backends, pools and runners need CUDA kernels (or torchvision) to import, so
there is no engine to run here. Instead:

- in each declared release's wheel (downloaded by `make vllm-env`): every name the adapter relies
  on, by check (``CHECKS``), resolves, and so do the facts its checks depend on (the methods it wraps are the
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
from pathlib import Path

import fused_allreduce
import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.adapters import ENTRY_POINTS
from sentinel_hooks.adapters import sglang as sglang_adapter
from sentinel_hooks.adapters.source import SourceIndex, checks_in

SGLANG_VERSION = os.environ.get("SGLANG_VERSION", "0.5.23")
CACHE = Path(os.environ.get("SENTINEL_CACHE", Path.home() / ".cache" / "sentinel"))
SGLANG_CACHE = Path(os.environ.get("SGLANG_CACHE", CACHE / f"sglang-{SGLANG_VERSION}"))
SGLANG_VENV = Path(os.environ.get("SGLANG_VENV", CACHE / f"sglang-venv-{SGLANG_VERSION}"))
SGLANG_PY = SGLANG_VENV / "bin" / "python"
VENV_READY = (SGLANG_VENV / f".sentinel-sglang-{SGLANG_VERSION}").is_file() and SGLANG_PY.exists()
REASON = "run `make vllm-env` (`make test` does it)"
# The older releases checked from source too (make's SGLANG_SOURCE_VERSIONS, space-separated).
SOURCE_VERSIONS = os.environ.get("SGLANG_SOURCE_VERSIONS", "0.5.20 0.5.21 0.5.22").split()


def _wheel(version: str) -> Path | None:
    cache = SGLANG_CACHE if version == SGLANG_VERSION else CACHE / f"sglang-{version}"
    wheels = sorted(cache.glob(f"sglang-{version}-*.whl"))
    return wheels[0] if wheels else None


needs_venv = pytest.mark.skipif(not VENV_READY, reason=f"no SGLang venv at {SGLANG_VENV}: {REASON}")
SOURCES = [pytest.param((v, _wheel(v)), id=f"wheel-{v}", marks=pytest.mark.skipif(
    _wheel(v) is None, reason=f"no sglang {v} wheel: {REASON}")) for v in (SGLANG_VERSION, *SOURCE_VERSIONS)]


@pytest.fixture(scope="module", params=SOURCES)
def versioned_source(request) -> tuple[str, SourceIndex]:
    version, wheel = request.param
    return version, SourceIndex.from_wheel(wheel, "sglang")


@pytest.fixture(scope="module")
def source(versioned_source) -> SourceIndex:
    return versioned_source[1]


def test_every_name_the_adapter_uses_exists_in_sglang(versioned_source):
    version, source = versioned_source
    # Every check is on: one of its alternatives resolves in full (for the identity, the place this
    # release keeps the ranks).
    assert {check: missing for check, missing in checks_in(source, sglang_adapter.CHECKS).items() if missing} == {}
    # The optional names are read with getattr and a fallback: no check may need one.
    needed = {name for alternatives in sglang_adapter.CHECKS.values() for names in alternatives for name in names}
    assert not set(sglang_adapter.OPTIONAL) & needed
    assert source.literal("sglang._version", "__version__") == version
    assert version in sglang_adapter.ADAPTER.verified_versions
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


def test_swa_allocator_size_is_the_minimum_so_the_adapter_reads_size_full_and_size_swa(source):
    cls = _class(source, "sglang.srt.mem_cache.allocator.swa", "SWATokenToKVPoolAllocator")
    props = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)
             and any(getattr(d, "id", None) == "property" for d in n.decorator_list)}
    assert {"size", "size_full", "size_swa"} <= set(props)
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "min" for n in ast.walk(props["size"]))


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


FLASHINFER_PROGRAM = r"""
import json, types
import torch
from sentinel_hooks.adapters import sglang as sa
from sentinel_hooks.probes import SentinelViolation

# SGLang's ForwardBatch and FlashInfer backend do not import on CPU (torchvision, CUDA kernels), so
# they are stood in for by objects with the attributes the check reads (CHECKS["paged_kv.flashinfer"],
# resolved in each release's source above); the tensors and the probe are real.
slots = 64  # the K buffer's token rows: what a slot index must stay below (page size 1)
req_to_token = torch.zeros(4, 32, dtype=torch.int32)
req_to_token[0, :10] = torch.arange(10)
req_to_token[0, 9] = slots  # inside request 0's 10 tokens: one past the buffer
req_to_token[1, 20] = slots  # past every request's length: never read
backend = types.SimpleNamespace(page_size=1, req_to_token_pool=types.SimpleNamespace(req_to_token=req_to_token),
                                token_to_kv_pool=types.SimpleNamespace(k_buffer=[torch.zeros(slots, 1, 8)]))
seq_lens = torch.tensor([10, 4], dtype=torch.int32)
rpi = torch.tensor([0, 1], dtype=torch.int32)
cases = {
    # 0.5.20-0.5.22: no max_seq_len_host at all; the width is seq_lens_cpu.max()
    "seq_lens_cpu": dict(seq_lens_cpu=seq_lens.clone()),
    # 0.5.23 with spec decode: max_seq_len_host set, seq_lens_cpu None
    "max_seq_len_host": dict(seq_lens_cpu=None, max_seq_len_host=10),
    # neither: no host-side bound, so the step is skipped rather than synced
    "neither": dict(seq_lens_cpu=None),
}
out = {}
for name, extra in cases.items():
    fb = types.SimpleNamespace(req_pool_indices=rpi, seq_lens=seq_lens, batch_size=2, **extra)
    try:
        sa.ADAPTER._check_flashinfer(backend, fb)
        out[name] = "passed"
    except SentinelViolation as exc:
        out[name] = [exc.check, exc.details.get("violations"), exc.details.get("max_offending_index")]
print(json.dumps(out))
"""


def test_flashinfer_slot_width_falls_back_to_seq_lens_cpu(h):
    """The FlashInfer check's bound on the slots it reads, on every declared release: 0.5.23's
    max_seq_len_host, else seq_lens_cpu.max() (0.5.20-0.5.22), else the step is skipped."""
    res = h.run_py(FLASHINFER_PROGRAM, env=h.hooked_env(SENTINEL_MODE="trap"), timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["seq_lens_cpu"] == ["page_table_oob", 1, 64], out
    assert out["max_seq_len_host"] == ["page_table_oob", 1, 64], out
    assert out["neither"] == "passed", out


def test_the_fused_allreduce_is_flashinfers_allreduce_fusion_on_a_managed_workspace(source):
    """SGLang's fused all-reduce + RMSNorm calls ``_flashinfer_comm.allreduce_fusion(**kwargs)``
    (looked up on the module at each call, which the adapter patches) with ``workspace=`` a workspace
    manager's, and the manager keeps its group's ``(device_group, cpu_group)``: what the adapter finds
    the group by."""
    tree = source.tree(sglang_adapter.FUSION)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "allreduce_fusion" and getattr(n.func.value, "id", None) == "_flashinfer_comm"]
    assert len(calls) >= 2, "the fused residual + RMSNorm and the plain fused all-reduce"
    text = source.files[sglang_adapter.FUSION]
    assert text.count("workspace=workspace_manager.workspace") >= len(calls)
    assert "group_key = (device_group, cpu_group)" in text and "workspace_manager.group != group_key" in text
    assert "self.group = (device_group, cpu_group)" in text  # the manager keeps it: [1] is the CPU group


# SGLang's fused all-reduce, with SGLang's real GroupCoordinator over gloo, registered as SGLang
# registers every group, and its workspace manager holding the group as ensure_workspace_initialized
# leaves it (that function needs a GPU to build the workspace); FlashInfer is a stand-in
# (tests/fused_allreduce.py).
FUSED_PROGRAM = r"""
import os, torch, torch.distributed as dist
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["PORT"], rank=rank, world_size=2)
from sglang.srt.distributed.parallel_state import GroupCoordinator
import sglang.srt.layers.flashinfer_comm_fusion as fusion
moe_tp = GroupCoordinator([[0, 1]], rank, "gloo", False, False, False, False, False, False, group_name="moe_tp")
attn_tp = GroupCoordinator([[0, 1]], rank, "gloo", False, False, False, False, False, False, group_name="attn_tp")
workspaces = {}
for attention_tp, group in ((True, attn_tp), (False, moe_tp)):
    manager = fusion._get_workspace_manager(attention_tp)
    manager.workspace = workspaces[attention_tp] = type("Workspace", (), {"cpu_group": group.cpu_group})()
    manager.group = (group.device_group, group.cpu_group)
import flashinfer.comm as flashinfer_comm
x = torch.ones(5, 100)
for attention_tp in (True, True, False):
    flashinfer_comm.allreduce_fusion(input=x, workspace=workspaces[attention_tp], pattern=1)
assert x[0, 0].item() == 8.0, x[0, 0]  # it ran: 1 -> 2 -> 4 -> 8
flashinfer_comm.allreduce_fusion(input=torch.ones(3), workspace=type("Foreign", (), {"cpu_group": None})())
attn_tp.all_reduce(torch.ones(2))  # the coordinator's own: next in the same sequence
print("OK", flush=True)
"""


@needs_venv
def test_flashinfer_fused_allreduce_counts_in_its_workspaces_group(h):
    for calls in fused_allreduce.run_ranks(h, SGLANG_PY, FUSED_PROGRAM, h.env(), "sglang"):
        # Each fused call once, in its workspace's group (the stand-in's gloo all-reduce inside it not
        # again). A call on a workspace SGLang does not manage is not counted as fused (its group is
        # unknown): only the stand-in's own torch all-reduce shows, in torch's group. The group's own
        # all-reduce comes next in its sequence.
        assert calls == [("pg:attn_tp:0[0-1]", 1, 500), ("pg:attn_tp:0[0-1]", 2, 500),
                         ("pg:moe_tp:0[0-1]", 1, 500), ("pg:0", 1, 3), ("pg:attn_tp:0[0-1]", 3, 2)], calls
