"""Sentinel hooks: what runs inside a serving process.

Importing this package is cheap and imports neither torch nor any serving framework. The ring
file is created on the first hook call, under ``SENTINEL_DIR``.

    import sentinel_hooks
    sentinel_hooks.step()                 # once per serving step: heartbeat + STEP record
    sentinel_hooks.event(7, a=123)        # a user event with up to three integers

    # before a paged-attention kernel (see probes.py for the semantics):
    sentinel_hooks.check_paged_kv(page_table, num_pages, seq_lens=seq_lens, page_size=16)
    sentinel_hooks.check_strides(kv_cache_view, name="kv_cache")
    sentinel_hooks.note_batch(num_tokens, token_budget=8192, graph_sizes=capture_sizes)

No function here raises into the caller (except ``SentinelViolation`` in ``trap`` mode); failures
become counted no-ops (see ``stats()``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "step", "event", "set_identity", "stats", "flush", "prepare_cuda", "trace_collectives", "Kind", "Check",
    "check_paged_kv", "check_strides", "note_batch", "configure", "SentinelViolation",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (or one of its modules, such as the ring format the daemon reads)
    # loads nothing else. The first use of a public name loads api.py and keeps the name here, so
    # later calls pay nothing for it.
    if name in __all__:
        value = getattr(importlib.import_module(".api", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
