"""Probe settings, from the environment or ``sentinel_hooks.configure()``.

    SENTINEL_MODE          observe (default) | trap | contain
    SENTINEL_SAMPLE_EVERY  run the probes on every Nth call of each probe site (default 1)
    SENTINEL_CHECKS        comma list of probes to run: paged_kv, strides, batch (default: all)
    SENTINEL_CONTAIN_PAGE  the reserved page that `contain` mode redirects bad indices to (default 0);
                           one the allocator never hands out, and inside every checked cache (a page
                           >= a call's num_pages is refused there: that call only observes)
    SENTINEL_DRAIN_MS      how often the drain thread copies device counters out (default 100)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MODES = ("observe", "trap", "contain")
PROBES = ("paged_kv", "strides", "batch")
INT32_MAX = (1 << 31) - 1


@dataclass
class ProbeConfig:
    mode: str = "observe"
    sample_every: int = 1
    enabled: frozenset[str] = field(default_factory=lambda: frozenset(PROBES))
    contain_page: int = 0
    drain_ms: int = 100

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> tuple[ProbeConfig, list[str]]:
        """The config, plus one message per ignored setting (the caller logs them once)."""
        env = os.environ if env is None else env
        cfg, problems = cls(), []
        mode = env.get("SENTINEL_MODE", "").strip().lower()
        if mode:
            if mode in MODES:
                cfg.mode = mode
            else:
                problems.append(f"SENTINEL_MODE={mode[:40]!r} is not one of {', '.join(MODES)}; using observe")
        # Upper bounds too: a page index is written into int32 page tables; the drain period becomes
        # a float of seconds (10**400 ms raised OverflowError there, failing every device probe call).
        for key, attr, low, high in (("SENTINEL_SAMPLE_EVERY", "sample_every", 1, INT32_MAX),
                                     ("SENTINEL_CONTAIN_PAGE", "contain_page", 0, INT32_MAX),
                                     ("SENTINEL_DRAIN_MS", "drain_ms", 1, 3_600_000)):
            raw = env.get(key, "").strip()
            if raw:
                try:
                    value = int(raw)
                    if not low <= value <= high:
                        raise ValueError
                    setattr(cfg, attr, value)
                except ValueError:
                    problems.append(f"{key}={raw[:40]!r} is not an integer from {low} to {high}; "
                                    f"using {getattr(cfg, attr)}")
        checks = env.get("SENTINEL_CHECKS", "").strip()
        if checks:
            wanted = {c.strip() for c in checks.split(",") if c.strip()}
            unknown = wanted - set(PROBES)
            if unknown:
                problems.append(f"SENTINEL_CHECKS names unknown probes {sorted(u[:40] for u in unknown)[:8]}; "
                                f"known: {', '.join(PROBES)}")
            cfg.enabled = frozenset(wanted & set(PROBES))
        return cfg, problems
