"""`sentinel demo`: the built-in demo on this machine (CPU is enough), or a real vLLM engine on CPU."""

from __future__ import annotations

import argparse

from sentinel.cli.options import finite_float

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "demo"
HELP = "run the built-in demo on this machine (CPU is enough), then summarise"
FRESH_DIR = True  # a fresh temp dir unless --dir is given (main leaves --dir unset)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel demo`."""
    p.add_argument("--duration", type=finite_float(0), default=20.0, help="seconds of workload (default: 20)")
    p.add_argument("--dir", default=None, help="use this SENTINEL_DIR instead of a fresh temp dir")
    p.add_argument("--vllm", action="store_true",
                   help="instead: a real vLLM engine on CPU under `sentinel run` (needs `make vllm-env`)")
    p.add_argument("--vllm-python", default=None, help="the vLLM environment's python (default: the cached one)")


def run(args: argparse.Namespace) -> int:
    """Run `sentinel demo` (the vLLM one with --vllm); returns its exit status: 0 when it saw what it
    should, 1 otherwise, 2 when the vLLM environment is missing."""
    if args.vllm:
        from sentinel.demo.vllm_demo import run_vllm_demo

        return run_vllm_demo(args.vllm_python, args.dir)
    from sentinel.demo.run import run_demo

    return run_demo(duration=args.duration, base_dir=args.dir)
