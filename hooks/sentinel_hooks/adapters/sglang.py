"""The SGLang adapter: the probes at SGLang's own choke points, with no change to SGLang's code.

Written against the source of sglang 0.5.23 and checked against 0.5.20, 0.5.21 and 0.5.22 (the
wheels on PyPI: every check's names in ``CHECKS`` resolve; SGLang has no
CPU build, so no engine runs). Its declared range is 0.5.20 <= version < 0.5.24: SGLang ships
features in the third digit, and the files around the hook points change by hundreds of lines
between these releases, so the names are checked, the semantics read in 0.5.23. Each hook point
serves one check ("heartbeat", "paged_kv.trtllm", "paged_kv.flashinfer", "strides", "idle",
"collectives", "collectives.fused"): a missing name turns off that check only. Where it patches,
each when SGLang imports the module (FlashInfer's, once SGLang is imported in the process; the
attention backend, the KV pool and the CUDA-graph runners all live in the scheduler process; TP
workers are not separate processes):

- TRT-LLM MHA (``TRTLLMHAAttnBackend``, the SM100 default):
  - ``init_forward_metadata`` (eager) and ``init_forward_metadata_in_graph`` (recorded into the
    decode CUDA graph, where TRT-LLM fills ``page_table``; it runs on every replay, and so does
    the probe's fused kernel when the probe is captured with it). ``page_table`` is checked
    against the real K buffer's pages (``k_buffer[0].shape[0] // page_size``; that buffer has
    ``size + page_size`` rows) over the region ``cache_seqlens`` reads, ``swa_page_table``
    against the SWA pool's; rows against ``forward_batch.batch_size`` (the padded size under DP
    padding; the real one is in ``_original_batch_size``), ``cu_seqlens_q``; the allocator's
    capacity (``size_full``, ``size_swa``; never ``size``, which is their minimum for SWA)
    against the buffer's pages.
  - ``init_forward_metadata_out_graph`` is deliberately *not* probed for TRT-LLM: before a replay
    it only selects the static metadata, whose buffers still hold the previous step's values.
- FlashInfer (``FlashInferAttnBackend``): ``init_forward_metadata`` (eager) and
  ``init_forward_metadata_out_graph`` (it refills the metadata outside the graph, before every
  replay). FlashInfer keeps no page table (page size 1, CSR indices inside its wrappers), so the
  probe checks the token slots its kernels read, ``req_to_token[req_pool_indices, :seq_len]``,
  against the K buffer's rows. The slice's width is ``ForwardBatch.max_seq_len_host`` (0.5.23,
  spec decode), else ``seq_lens_cpu.max()`` (a host tensor, every release); a batch with neither
  is skipped, not synced.
- ``sglang.kernels.ops.attention.utils.canonicalize_stride`` (and its by-name binding in
  trtllm_mha_backend): ``check_strides`` sees the paged KV view before SGLang silently repairs a
  size-1 dimension's stride (seed 002). Record only: the original always runs.
- ``ModelRunner.forward``: the heartbeat, ``note_batch``, and the identity (TP/PP/DP rank from
  ``sglang.srt.runtime_context.get_parallel()``, under each release's names, ``IDENTITY_ATTRS``;
  read at the first forward: SGLang publishes the ranks after plugins load).
- ``sglang.srt.distributed.parallel_state.GroupCoordinator``'s collectives (``COLLECTIVES``),
  traced per group and sequence number whatever backend then runs them (custom all-reduce, PCIe
  IPC, PyNccl, symmetric memory, FlashInfer's all-reduce, torch), eager or captured in a CUDA graph
  (``collectives.py``).
- ``flashinfer.comm.allreduce_fusion``, when FlashInfer is imported: the fused all-reduce + RMSNorm
  (``flashinfer_allreduce_residual_rmsnorm`` and the plain fused all-reduce, with a
  ``--flashinfer-allreduce-fusion-backend``), which bypasses every GroupCoordinator method. Each call
  counts as an all-reduce of the group whose workspace it is handed: SGLang's two workspace managers
  (``_get_workspace_manager``: attention TP, or the post-experts reduction group) keep the group's
  torch process groups, and the coordinator registered (``_groups``) with that CPU group is the one
  counted. Not counted: calls on a workspace neither manager holds (the cutedsl backend's,
  ``flashinfer_mnnvl_cutedsl``; a model's private band, ``models/beam.py``).
- ``Scheduler.on_idle`` / ``Scheduler.run_batch`` (optional): whether the engine has work, in the
  ring header. An idle scheduler does not step, so the heartbeat alert leaves it alone.

Entry point: ``sglang.srt.plugins``: ``sentinel = sentinel_hooks.adapters.sglang:register``. It
arms the same lazy, fail-soft patches (not SGLang's HookRegistry, which would import every
target module in every process at start-up and could not be undone per hook point).
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType
from typing import Any

from .. import probes, runtime
from .base import Adapter, HookPoint, Names

__all__ = ["ADAPTER", "CANONICALIZE", "CHECKS", "COLLECTIVES", "IDENTITY_ATTRS", "IDENTITY_PATHS", "OPTIONAL",
           "SGLangAdapter", "register"]

RUNNER = "sglang.srt.model_executor.model_runner"
TRTLLM = "sglang.srt.layers.attention.trtllm_mha_backend"
FLASHINFER = "sglang.srt.layers.attention.flashinfer_backend"
CANONICALIZE_MODULE = "sglang.kernels.ops.attention.utils"
SCHEDULER = "sglang.srt.managers.scheduler"
CANONICALIZE = "canonicalize_stride"
CANONICALIZE_SITE = "sglang.canonicalize_stride"  # the probe site its stride records go under

PARALLEL_STATE = "sglang.srt.distributed.parallel_state"
FUSION = "sglang.srt.layers.flashinfer_comm_fusion"  # calls flashinfer.comm.allreduce_fusion
FORWARD_BATCH = "sglang.srt.model_executor.forward_batch_info"
# The TP collectives: GroupCoordinator's methods, as method -> (op, position of the tensor argument
# after self). The inner methods are what torch.ops.sglang's ops call at run time (they look the
# group up by name and call the instance, so patching the class reaches compiled graphs too);
# all_reduce is patched as well because with symmetric memory it calls PyNccl itself. Where one calls
# another, the outer call counts (collectives.engine_collective). Read in the source of 0.5.20 to
# 0.5.23; CI resolves them in each declared release's wheel (CHECKS).
COLLECTIVES = {
    "all_reduce": ("all_reduce", 0),
    "_all_reduce_out_place": ("all_reduce", 0),
    "_all_reduce_in_place": ("all_reduce", 0),
    "_flashinfer_allreduce": ("all_reduce", 0),
    "_all_gather_into_tensor": ("all_gather_into_tensor", 1),
    "all_gather": ("all_gather", 0),
    "all_gatherv": ("all_gather", 0),
    "_reduce_scatter_tensor": ("reduce_scatter_tensor", 1),
    "reduce_scatter": ("reduce_scatter", 1),
    "reduce_scatterv": ("reduce_scatter", 0),
    "_all_to_all_single": ("all_to_all_single", 1),
    "broadcast": ("broadcast", 0),
}

# Optional, read with getattr: the FlashInfer check's bound on the slots to read. Only 0.5.23 has
# it (and sets it only when seq_lens_cpu is None); elsewhere the check takes seq_lens_cpu.max(), a
# host tensor, and without either it skips the step rather than sync.
OPTIONAL: Names = ((FORWARD_BATCH, "ForwardBatch.max_seq_len_host"),)

# Where a release keeps the process's ranks, for the identity. 0.5.21 and later declare them as
# Parallel fields, which get_parallel() serves (launch_world_rank, launch_world_size, dp_rank);
# 0.5.20's ParallelContext has world_rank and world_size, and its dp rank is the ModelRunner's
# ParallelState (runner.ps).
IDENTITY_PATHS: dict[str, Names] = {
    "Parallel": tuple(("sglang.srt.arg_groups.fields.parallel", f"Parallel.{name}")
                      for name in ("tp_rank", "pp_rank", "dp_rank", "launch_world_rank", "launch_world_size")),
    "ParallelContext": (("sglang.srt.runtime_context", "ParallelContext.tp_rank"),
                        ("sglang.srt.runtime_context", "ParallelContext.pp_rank"),
                        ("sglang.srt.runtime_context", "ParallelContext.world_rank"),
                        ("sglang.srt.runtime_context", "ParallelContext.world_size"),
                        (RUNNER, "ModelRunner.ps"),
                        ("sglang.srt.distributed.parallel_state_wrapper", "ParallelState.dp_rank")),
}
# identity field -> the ParallelContext attributes that hold it, newest name first
IDENTITY_ATTRS = (("tp_rank", ("tp_rank",)), ("pp_rank", ("pp_rank",)), ("dp_rank", ("dp_rank",)),
                  ("rank", ("launch_world_rank", "world_rank")), ("world_size", ("launch_world_size", "world_size")))

_POOLS: Names = (
    ("sglang.srt.mem_cache.memory_pool", "MHATokenToKVPool.k_buffer"),
    ("sglang.srt.mem_cache.memory_pool", "KVCache.page_size"),
    ("sglang.srt.mem_cache.swa_memory_pool", "SWAKVPool.full_kv_pool"),
    ("sglang.srt.mem_cache.swa_memory_pool", "SWAKVPool.swa_kv_pool"),
    ("sglang.srt.mem_cache.allocator.base", "BaseTokenToKVPoolAllocator.size_full"),
    ("sglang.srt.mem_cache.allocator.swa", "SWATokenToKVPoolAllocator.size_full"),
    ("sglang.srt.mem_cache.allocator.swa", "SWATokenToKVPoolAllocator.size_swa"),
    (RUNNER, "ModelRunner.token_to_kv_pool_allocator"),
    (FORWARD_BATCH, "ForwardBatch.batch_size"),
    (FORWARD_BATCH, "ForwardBatch._original_batch_size"),
)

# Every name the adapter uses, as (module, "Name" | "Class.attr"), by the check that needs it: each
# check maps to its alternatives, name sets of which one must resolve in full for the check to be
# on. tests/test_sglang_source.py requires every check in each declared release's wheel, so a
# release that moves one fails in CI; `sentinel doctor` reports them for the release installed
# where it runs.
CHECKS: dict[str, tuple[Names, ...]] = {
    "version": ((("sglang", "__version__"), ("sglang.srt.plugins", "GENERAL_PLUGINS_GROUP"),
                 ("sglang.srt.plugins", "load_plugins")),),
    "heartbeat": (((RUNNER, "ModelRunner.forward"),),),
    "batch": ((("sglang.srt.runtime_context", "get_schedule"), ("sglang.srt.runtime_context", "get_exec"),
               ("sglang.srt.arg_groups.fields.schedule", "Schedule.chunked_prefill_size"),
               (FORWARD_BATCH, "ForwardBatch.input_ids"), (FORWARD_BATCH, "ForwardBatch.batch_size")),),
    "identity": tuple(((RUNNER, "ModelRunner.gpu_id"), ("sglang.srt.runtime_context", "get_parallel")) + path
                      for path in IDENTITY_PATHS.values()),
    "paged_kv.trtllm": (_POOLS + (
        ("sglang.srt.model_executor.runner.decode_cuda_graph_runner", "build_replay_fb_view"),
        (TRTLLM, "TRTLLMHAAttnBackend.init_forward_metadata"),
        (TRTLLM, "TRTLLMHAAttnBackend.init_forward_metadata_in_graph"),
        (TRTLLM, "TRTLLMHAAttnBackend.init_forward_metadata_out_graph"),
        (TRTLLM, "TRTLLMHAAttnBackend.forward_metadata"),
        (TRTLLM, "TRTLLMHAAttnBackend.page_size"),
        (TRTLLM, "TRTLLMHAAttnBackend._swa_kv_pool"),
        (TRTLLM, "TRTLLMHAAttnBackend.token_to_kv_pool"),
        (TRTLLM, "TRTLLMMHAMetadata.page_table"),
        (TRTLLM, "TRTLLMMHAMetadata.swa_page_table"),
        (TRTLLM, "TRTLLMMHAMetadata.cache_seqlens_int32"),
        (TRTLLM, "TRTLLMMHAMetadata.cu_seqlens_q"),
    ),),
    "paged_kv.flashinfer": (_POOLS + (
        (FORWARD_BATCH, "ForwardBatch.req_pool_indices"),
        (FORWARD_BATCH, "ForwardBatch.seq_lens"),
        (FORWARD_BATCH, "ForwardBatch.seq_lens_cpu"),
        (FLASHINFER, "FlashInferAttnBackend.init_forward_metadata"),
        (FLASHINFER, "FlashInferAttnBackend.init_forward_metadata_out_graph"),
        (FLASHINFER, "FlashInferAttnBackend.token_to_kv_pool"),
        (FLASHINFER, "FlashInferAttnBackend.req_to_token_pool"),
        (FLASHINFER, "FlashInferAttnBackend.page_size"),
        ("sglang.srt.mem_cache.memory_pool", "ReqToTokenPool.req_to_token"),
    ),),
    "strides": (((CANONICALIZE_MODULE, CANONICALIZE), (TRTLLM, CANONICALIZE)),),
    "idle": (((SCHEDULER, "Scheduler.on_idle"), (SCHEDULER, "Scheduler.run_batch")),),
    "collectives": (tuple((PARALLEL_STATE, f"GroupCoordinator.{name}") for name in
                          (*COLLECTIVES, "unique_name", "ranks", "rank", "world_size", "rank_in_group")),),
    # FlashInfer's name itself is FlashInfer's: the patch requires it when flashinfer.comm loads, and
    # tests/test_sglang_source.py checks that each release's fusion calls it by that name.
    "collectives.fused": (((FUSION, "_get_workspace_manager"), (FUSION, "FlashInferWorkspaceManager.workspace"),
                           (FUSION, "FlashInferWorkspaceManager.group"), (PARALLEL_STATE, "_groups"),
                           (PARALLEL_STATE, "GroupCoordinator.cpu_group")),),
}


class SGLangAdapter(Adapter):
    """The SGLang adapter (0.5.20 <= version < 0.5.24); its hook points are in the module
    docstring."""

    name = "sglang"
    module = "sglang"
    distributions = ("sglang",)
    verified_versions = ("0.5.20", "0.5.21", "0.5.22", "0.5.23")  # checked from their wheels' source
    supported_versions = ("0.5.20", "0.5.24")

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()  # .runner: the ModelRunner in forward; .depth: inside a hook

    def hook_points(self) -> list[HookPoint]:
        return [  # the base adds "sglang" itself (version check, identity)
            HookPoint(RUNNER, self._patch_runner, check="heartbeat"),
            HookPoint(TRTLLM, self._patch_trtllm, check="paged_kv.trtllm"),
            HookPoint(FLASHINFER, self._patch_flashinfer, check="paged_kv.flashinfer"),
            HookPoint(CANONICALIZE_MODULE, self._patch_canonicalize, check="strides"),
            HookPoint(SCHEDULER, self._patch_scheduler_idle, check="idle"),
            HookPoint(PARALLEL_STATE, self._patch_collectives, check="collectives"),
            HookPoint("flashinfer.comm", self._patch_fused_allreduce, check="collectives.fused"),
        ]

    # -- hook points -------------------------------------------------------------------------------

    def _patch_collectives(self, module: ModuleType) -> None:
        self.patch_collectives(module, "GroupCoordinator", COLLECTIVES)

    def _patch_fused_allreduce(self, module: ModuleType) -> None:
        """FlashInfer's fused all-reduce + RMSNorm, counted in the group of its workspace (the module
        docstring)."""
        self.patch_fused_allreduce(module, _fused_group)

    def _patch_scheduler_idle(self, module: ModuleType) -> None:
        """The scheduler's idle state, for the heartbeat alert: with no batch to run, its event loop
        calls on_idle() instead of run_batch(), and nothing steps."""
        self.require(module, "Scheduler")
        cls = module.Scheduler
        self.require(cls, "on_idle", "run_batch")
        adapter = self

        def make_state(original, idle: bool):
            def wrapper(scheduler, *args, **kwargs):
                if adapter.on("idle"):
                    runtime.set_idle(idle)  # writes on a change only; never raises
                return original(scheduler, *args, **kwargs)

            return wrapper

        self.patch(cls, "on_idle", lambda original: make_state(original, True))
        self.patch(cls, "run_batch", lambda original: make_state(original, False))

    def _patch_runner(self, module: ModuleType) -> None:
        self.require(module, "ModelRunner")
        adapter = self

        def make(original):
            def forward(runner, *args, **kwargs):
                if not adapter.on("heartbeat"):
                    return original(runner, *args, **kwargs)
                local = adapter._local
                previous, local.runner = getattr(local, "runner", None), runner
                adapter.once("ModelRunner identity", adapter._identity, runner, check="identity")
                fb = args[0] if args else kwargs.get("forward_batch")
                adapter.guard("ModelRunner.forward", adapter._note_batch, fb, check="batch")
                try:
                    return original(runner, *args, **kwargs)
                finally:
                    local.runner = previous
                    adapter.heartbeat()

            return forward

        self.patch(module.ModelRunner, "forward", make)

    def _patch_trtllm(self, module: ModuleType) -> None:
        self.require(module, "TRTLLMHAAttnBackend")
        cls = module.TRTLLMHAAttnBackend
        self.require(cls, "init_forward_metadata", "init_forward_metadata_in_graph")
        for method in ("init_forward_metadata", "init_forward_metadata_in_graph"):
            self.patch(cls, method, self._metadata_wrapper(f"TRTLLMHAAttnBackend.{method}", self._check_trtllm,
                                                           "paged_kv.trtllm"))
        if hasattr(module, CANONICALIZE):  # bound by name: patched here too (propagation covers it)
            self._canonicalize_binding(module)

    def _patch_flashinfer(self, module: ModuleType) -> None:
        self.require(module, "FlashInferAttnBackend")
        cls = module.FlashInferAttnBackend
        self.require(cls, "init_forward_metadata", "init_forward_metadata_out_graph")
        for method in ("init_forward_metadata", "init_forward_metadata_out_graph"):
            self.patch(cls, method, self._metadata_wrapper(f"FlashInferAttnBackend.{method}", self._check_flashinfer,
                                                           "paged_kv.flashinfer"))

    def _patch_canonicalize(self, module: ModuleType) -> None:
        self.require(module, CANONICALIZE)
        self.patch_everywhere(module, CANONICALIZE, self.stride_observer(CANONICALIZE_SITE))

    def _canonicalize_binding(self, module: ModuleType) -> None:
        current = getattr(module, CANONICALIZE)
        if getattr(current, "__sentinel_adapter__", None) != self.name:
            self.patch(module, CANONICALIZE, self.stride_observer(CANONICALIZE_SITE))

    def _metadata_wrapper(self, where: str, check_fn, check: str):
        adapter = self

        def make(original):
            def init_metadata(backend, *args, **kwargs):
                local = adapter._local
                depth = getattr(local, "depth", 0)
                local.depth = depth + 1
                try:
                    result = original(backend, *args, **kwargs)
                finally:
                    local.depth = depth
                # The outermost hook checks (a backend's eager path may call its graph halves).
                if adapter.on(check) and depth == 0:
                    fb = args[0] if args else kwargs.get("forward_batch")
                    adapter.guard(where, check_fn, backend, fb, check=check)
                return result

            return init_metadata

        return make

    # -- checks ------------------------------------------------------------------------------------

    def _allocator(self) -> Any:
        runner = getattr(self._local, "runner", None)
        return getattr(runner, "token_to_kv_pool_allocator", None)

    def _check_trtllm(self, backend: Any, fb: Any) -> None:
        md = backend.forward_metadata
        if md is None or fb is None:
            return
        table = md.page_table
        if table is None:
            return
        page_size = int(backend.page_size)
        pool = backend.token_to_kv_pool
        swa_pool = getattr(backend, "_swa_kv_pool", None)
        full = getattr(swa_pool if swa_pool is not None else pool, "full_kv_pool", None) or pool
        pages = _pool_pages(full, page_size)
        if pages is None:
            return
        alloc = self._allocator()
        bs = int(fb.batch_size)
        seq_lens = md.cache_seqlens_int32
        cap = _alloc_pages(alloc, "size_full", page_size)
        probes.check_paged_kv(table, pages, seq_lens=seq_lens, page_size=page_size, batch_size=bs,
                              cu_seqlens_q=md.cu_seqlens_q, allocator_capacity=cap, name="sglang.trtllm")
        swa_table = getattr(md, "swa_page_table", None)
        if swa_table is not None and swa_pool is not None:
            swa_pages = _pool_pages(swa_pool.swa_kv_pool, page_size)
            if swa_pages is not None:
                probes.check_paged_kv(swa_table, swa_pages, seq_lens=seq_lens, page_size=page_size, batch_size=bs,
                                      allocator_capacity=_alloc_pages(alloc, "size_swa", page_size),
                                      name="sglang.trtllm.swa")

    def _check_flashinfer(self, backend: Any, fb: Any) -> None:
        if fb is None:
            return
        rpi, seq_lens = getattr(fb, "req_pool_indices", None), getattr(fb, "seq_lens", None)
        if rpi is None or seq_lens is None:
            return
        max_len = getattr(fb, "max_seq_len_host", None)
        if not isinstance(max_len, int):
            cpu = getattr(fb, "seq_lens_cpu", None)
            if cpu is None or cpu.numel() == 0:
                return  # no host-side bound: reading it would sync
            max_len = int(cpu.max())
        pool = backend.token_to_kv_pool
        full = getattr(pool, "full_kv_pool", None) or pool
        page_size = int(backend.page_size)
        pages = _pool_pages(full, page_size)
        if pages is None:
            return
        slots = pages * page_size  # FlashInfer reads token slots (its page size is 1)
        req_to_token = backend.req_to_token_pool.req_to_token
        width = max(1, min(int(max_len), int(req_to_token.shape[1])))
        # The slots each request's kernel reads; rows clamped so a bad request index cannot fault here.
        table = req_to_token[rpi.long().clamp(0, req_to_token.shape[0] - 1), :width]
        alloc = self._allocator()
        size_full = getattr(alloc, "size_full", None)
        probes.check_paged_kv(table, slots, seq_lens=seq_lens, page_size=1, batch_size=int(fb.batch_size),
                              allocator_capacity=int(size_full) + 1 if isinstance(size_full, int) else None,
                              name="sglang.flashinfer")

    def _note_batch(self, fb: Any) -> None:
        if fb is None:
            return
        ids = getattr(fb, "input_ids", None)
        tokens = int(ids.shape[0]) if ids is not None and hasattr(ids, "shape") else int(fb.batch_size)
        budget, graph_sizes = None, None
        try:
            from sglang.srt import runtime_context as rc

            chunk = rc.get_schedule().chunked_prefill_size
            budget = int(chunk) if isinstance(chunk, int) and chunk > 0 else None
            graph_sizes = rc.get_exec().graph.cuda_graph_bs_decode
        except Exception:  # context only: the probes do not depend on it
            pass
        probes.note_batch(tokens, token_budget=budget, graph_sizes=graph_sizes,
                          batch_size=int(fb.batch_size), name="sglang.batch")

    def _identity(self, runner: Any) -> None:
        fields: dict[str, Any] = {}
        gpu = getattr(runner, "gpu_id", None)
        if isinstance(gpu, int):
            fields["local_rank"] = gpu
        try:
            from sglang.srt.runtime_context import get_parallel

            p = get_parallel()
            for key, attrs in IDENTITY_ATTRS:
                for attr in attrs:
                    try:
                        value = getattr(p, attr)
                    except Exception:  # not this release's name (its __getattr__ raises)
                        continue
                    if isinstance(value, int):
                        fields[key] = value
                        break
        except Exception as exc:  # identity is best effort: the probes do not depend on it
            runtime.log_once("adapter-identity:sglang", "sglang adapter: no parallel context for the identity (%s)",
                             exc)
        dp = getattr(getattr(runner, "ps", None), "dp_rank", None)  # 0.5.20: not on its ParallelContext
        if "dp_rank" not in fields and isinstance(dp, int):
            fields["dp_rank"] = dp
        if fields:
            runtime.set_identity(**fields)


def _pool_pages(pool: Any, page_size: int) -> int | None:
    """Pages the pool's K buffer really holds (what a page id must stay below)."""
    buffers = getattr(pool, "k_buffer", None)
    if not buffers:
        return None
    k = buffers[0]
    if not hasattr(k, "shape") or k.dim() < 3:
        return None
    if k.dim() == 4:  # HND: [num_pages, heads, page_size, head_dim]
        return int(k.shape[0])
    return int(k.shape[0]) // max(1, page_size)  # NHD: size + page_size token rows


def _alloc_pages(alloc: Any, attr: str, page_size: int) -> int | None:
    """Page ids the allocator may hand out, page 0 (the padding page) included."""
    size = getattr(alloc, attr, None) if alloc is not None else None
    if not isinstance(size, int):
        return None
    return size // max(1, page_size) + 1


ADAPTER = SGLangAdapter()


def register() -> None:
    """The ``sglang.srt.plugins`` entry point: SGLang calls it in every process it starts (filtered
    by ``SGLANG_PLUGINS``). Arms the hooks as ``sentinel run`` does."""
    ADAPTER.register_plugin()


FUSED_GROUP_ATTR = "_sentinel_fused_group"  # on an SGLang workspace manager: (its group pair, the coordinator)


def _fused_group(args: tuple, kwargs: dict) -> Any:
    """The GroupCoordinator of the fused all-reduce's ``workspace`` keyword: the coordinator whose CPU
    group is the one the workspace was built on (each of SGLang's two workspace managers keeps its
    group's ``(device_group, cpu_group)``); None when neither manager holds the workspace (the cutedsl
    backend's and a model's private workspaces: not traced) or SGLang's names moved (logged once).
    A few attribute reads a call, no lock, no CUDA call: the coordinator found is kept on the manager
    (``FUSED_GROUP_ATTR``, with the group pair it was found for), so the registry is searched only
    when a workspace is (re)built."""
    workspace = kwargs.get("workspace")
    fusion, ps = sys.modules.get(FUSION), sys.modules.get(PARALLEL_STATE)
    if workspace is None or fusion is None or ps is None:
        return None
    managers, groups = getattr(fusion, "_get_workspace_manager", None), getattr(ps, "_groups", None)
    if managers is None or groups is None:
        runtime.log_once("sglang:fused-names", "sglang adapter: %s._get_workspace_manager or %s._groups is "
                         "missing; the fused all-reduce is not traced", FUSION, PARALLEL_STATE)
        return None
    for attention_tp in (True, False):
        manager = managers(attention_tp)
        pair = getattr(manager, "group", None)
        if getattr(manager, "workspace", None) is not workspace or pair is None:
            continue
        found = getattr(manager, FUSED_GROUP_ATTR, None)
        if found is not None and found[0] is pair:
            return found[1]
        for ref in list(groups.values()):
            group = ref()
            if group is not None and group.cpu_group is pair[1]:
                setattr(manager, FUSED_GROUP_ATTR, (pair, group))
                return group
    return None
