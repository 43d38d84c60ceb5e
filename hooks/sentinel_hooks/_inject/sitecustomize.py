"""Injected by ``sentinel run``: arms the Sentinel hooks in every Python process of the command.

It first runs the sitecustomize that would have run without us (the next one on sys.path), so
the environment's own customisation is kept. Nothing here may break the host interpreter.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))


def _chain_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", paths)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_sentinel_chained_sitecustomize"] = module
    spec.loader.exec_module(module)


def _arm() -> None:
    import sentinel_hooks.inject

    sentinel_hooks.inject.arm()


for _step in (_chain_next_sitecustomize, _arm):
    try:
        _step()
    except Exception as _exc:  # never break the interpreter's start-up
        try:
            sys.stderr.write(f"sentinel: {_step.__name__} failed: {type(_exc).__name__}: {_exc}\n")
        except Exception:
            pass
