"""Test-only ``vllm.general_plugins`` entry point (found through its dist-info on PYTHONPATH).

In the worker it wraps the CPU backend's metadata builder, which knows nothing of Sentinel:

- ``SENTINEL_TEST_ORACLE=path``: one JSON line per metadata build with what vLLM itself says,
  independently of Sentinel: ``cache_config.num_gpu_blocks``, the bound KV cache's blocks, the
  highest block id in the region the kernel reads (from the runner's own block table, before any
  corruption), ``max_num_batched_tokens``.
- ``SENTINEL_TEST_CORRUPT_AT=N``: on the N-th build, row 0 / column 0 of the block table the CPU
  kernel gets (inside the region it reads) becomes ``num_blocks``: one past the KV cache.

The entry is put back when the runner's ``_build_attention_metadata`` returns, before any layer
runs, and also when an exception (a Sentinel trap) leaves it. So in observe mode the CPU kernel
never reads past the allocation: what the test checks is what Sentinel saw, not what the kernel
would have done with the bad index. Sentinel's own hook sits between the two, at
``AttentionGroup.build_metadata``, whichever plugin is loaded first.

- ``SENTINEL_TEST_CRASH_INDEX=I``: with CORRUPT_AT, the entry becomes ``I`` instead and is left in
  place, so vLLM's CPU attention kernel (``cpu_attention_with_kv_cache``) reads block ``I``. An
  index far past the cache (2**30) makes the worker die of SIGSEGV inside that native op: a real
  crash below Sentinel's adapter wrappers.
- ``SENTINEL_TEST_STALL_RANK=R`` and ``SENTINEL_TEST_STALL_STEP=N``: the worker of global rank R
  stops (sleeps an hour) at the start of its N-th model step with tokens, before the step's first
  TP collective: a stuck host loop, while its peers wait in that collective.
"""

import functools
import json
import os

_state = {"builds": 0, "pending": None}


def _oracle(line):
    path = os.environ.get("SENTINEL_TEST_ORACLE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def register():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadataBuilder
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(CPUAttentionMetadataBuilder.build, "_corrupt_plugin", False):
        return
    corrupt_at = int(os.environ.get("SENTINEL_TEST_CORRUPT_AT", "0") or 0)
    crash_index = int(os.environ.get("SENTINEL_TEST_CRASH_INDEX", "0") or 0)
    orig_build = CPUAttentionMetadataBuilder.build

    @functools.wraps(orig_build)
    def build(self, common_prefix_len, common_attn_metadata, *args, **kwargs):
        md = orig_build(self, common_prefix_len, common_attn_metadata, *args, **kwargs)
        _state["builds"] += 1
        cfg = self.vllm_config
        kv = cfg.compilation_config.static_forward_context[self.layer_names[0]].kv_cache
        block_size = self.kv_cache_spec.block_size
        table = common_attn_metadata.block_table_tensor
        seq_lens = common_attn_metadata.seq_lens.tolist()
        used = [int(table[i, : -(-s // block_size)].max()) for i, s in enumerate(seq_lens) if s > 0]
        corrupt = _state["builds"] == corrupt_at
        _oracle({"build": _state["builds"], "pid": os.getpid(), "num_gpu_blocks": cfg.cache_config.num_gpu_blocks,
                 "kv_blocks": int(kv.shape[0]), "block_size": block_size, "max_block_used": max(used, default=-1),
                 "rows": int(md.block_table.shape[0]), "num_actual_tokens": int(md.num_actual_tokens),
                 "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens, "corrupted": corrupt})
        if corrupt and crash_index:
            md.block_table[0, 0] = crash_index
        elif corrupt:
            _state["pending"] = (md.block_table, int(md.block_table[0, 0]))
            md.block_table[0, 0] = int(kv.shape[0])
        return md

    build._corrupt_plugin = True
    CPUAttentionMetadataBuilder.build = build

    orig_bam = GPUModelRunner._build_attention_metadata

    @functools.wraps(orig_bam)
    def _build_attention_metadata(self, *args, **kwargs):
        try:
            return orig_bam(self, *args, **kwargs)
        finally:
            pending, _state["pending"] = _state["pending"], None
            if pending is not None:
                table, value = pending
                table[0, 0] = value

    GPUModelRunner._build_attention_metadata = _build_attention_metadata
    _stall(GPUModelRunner)


def _stall(runner_cls):
    rank = os.environ.get("SENTINEL_TEST_STALL_RANK", "")
    if not rank:
        return
    at = int(os.environ.get("SENTINEL_TEST_STALL_STEP", "3"))
    orig = runner_cls.execute_model
    steps = [0]

    @functools.wraps(orig)
    def execute_model(self, scheduler_output, *args, **kwargs):
        import time

        import torch.distributed as dist

        if getattr(scheduler_output, "total_num_scheduled_tokens", 0) > 0:
            steps[0] += 1
            if steps[0] == at and dist.get_rank() == int(rank):
                _oracle({"stall": True, "pid": os.getpid(), "rank": int(rank), "step": at, "t": time.time()})
                time.sleep(3600)
        return orig(self, scheduler_output, *args, **kwargs)

    runner_cls.execute_model = execute_model
