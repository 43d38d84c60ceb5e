"""A tiny vLLM engine on CPU, for `sentinel demo --vllm` and the adapter tests (tests/test_vllm_engine.py).
Run by the vLLM environment's own Python, as a file: it imports nothing of Sentinel.

    python vllm_engine.py MODEL_DIR

Writes a tiny Llama config (2 layers, hidden 128, 4 heads, 2 KV heads, head_dim 32, vocab 512)
into MODEL_DIR and runs it with dummy weights, no tokenizer, eager mode, in float32 (see DTYPE).
With VLLM_TEST_TP=2 it runs with tensor parallelism 2: two worker processes (vLLM's multiprocessing
executor) whose TP collectives go through vLLM's CpuCommunicator (shared memory). With
VLLM_TEST_LOOP_S=S it keeps generating for S seconds (1 to 32 tokens, 0 to 0.5 s apart) before the
``generated`` event.
Prints JSON lines:
``{"event": "ready", "pid": ..., "children": {pid: name}, "attn_isa": ...}`` once the engine is up,
``{"event": "generated", "outputs": [[token ids], ...]}`` or ``{"event": "error", ...}``.
With SENTINEL_TEST_GO_FILE set it then waits (up to 120 s) for that file, so the test can
scrape the daemon while the engine's processes are alive. Knows nothing of Sentinel.

Run as a file, its folder is sys.path[0]: no module next to it may be named like a package the
engine imports (vllm, torch, cuda, ...), or that import finds ours (tests/test_layout.py checks).
"""

import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# float32, not bfloat16: on a CPU that advertises AMX, vLLM 0.32's CPU backend serves bf16 with its
# AMX attention kernel (cpu_attn._get_attn_isa: bf16 and a block size that is a multiple of 32). On
# virtual machines that advertise AMX, that kernel killed the worker with SIGILL in about 3 of 5
# runs, with or without Sentinel. In float32 vLLM takes its portable vector kernel ("vec", or
# "vec16" for other block sizes) on any x86-64 machine. The ready event reports the one it chose.
DTYPE = "float32"
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
    "vocab_size": 512, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": DTYPE,
}
PROMPTS = [[1, 2, 3, 4], [5, 6, 7, 8, 9, 10]]
MAX_TOKENS = 8


def emit(**fields):
    """Print ``fields`` as one JSON line on stdout, flushed (the demo and the tests read it)."""
    print(json.dumps(fields), flush=True)


def attention_isa(llm):
    """The CPU attention kernel vLLM picks for this engine's dtype and block size ("" if unknown)."""
    try:
        import torch
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        config = llm.llm_engine.vllm_config
        return _get_attn_isa(getattr(torch, DTYPE), config.cache_config.block_size,
                             config.model_config.get_head_size())
    except Exception as exc:  # a private helper of vLLM's: report, never fail the engine for it
        return f"unknown ({type(exc).__name__}: {exc})"


def main():
    """Write the model's config into sys.argv[1], run the engine and emit its events; exits 3 after
    the ``error`` event when generation raises. Then waits up to 120 s for SENTINEL_TEST_GO_FILE, if
    set."""
    model_dir = sys.argv[1]
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    import psutil
    from vllm import LLM, SamplingParams

    tp = int(os.environ.get("VLLM_TEST_TP", "1"))
    parallel = {"tensor_parallel_size": tp, "distributed_executor_backend": "mp"} if tp > 1 else {}
    llm = LLM(model=model_dir, load_format="dummy", skip_tokenizer_init=True, enforce_eager=True,
              max_model_len=512, dtype=DTYPE, seed=0, **parallel)
    children = {}
    for child in psutil.Process().children(recursive=True):
        try:
            children[child.pid] = child.name()
        except psutil.Error:
            pass
    emit(event="ready", pid=os.getpid(), children=children, attn_isa=attention_isa(llm))
    params = SamplingParams(max_tokens=MAX_TOKENS, detokenize=False, temperature=0.0)
    loop_s = float(os.environ.get("VLLM_TEST_LOOP_S", "0"))
    deadline = time.monotonic() + loop_s
    rounds = 0
    while True:
        try:
            outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
        except Exception as exc:  # the trap test: the engine died of a SentinelViolation in the worker
            emit(event="error", type=type(exc).__name__, message=str(exc)[:4000])
            sys.exit(3)
        rounds += 1
        if time.monotonic() >= deadline:
            break
        # Healthy load with jitter: requests of varying length, with idle gaps between them.
        params = SamplingParams(max_tokens=random.randint(1, 32), detokenize=False, temperature=0.0)
        time.sleep(random.uniform(0, 0.5))
    emit(event="generated", outputs=[list(o.outputs[0].token_ids) for o in outs], rounds=rounds)
    go = os.environ.get("SENTINEL_TEST_GO_FILE")
    if go:
        deadline = time.monotonic() + 120
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
