"""Probe settings: from the environment (``env.py``'s SENTINEL_MODE, SENTINEL_SAMPLE_EVERY,
SENTINEL_CHECKS, SENTINEL_CONTAIN_PAGE, SENTINEL_DRAIN_MS), or ``sentinel_hooks.configure()``.

``probe_config()`` is the process's one copy, read on first use; its bad values are logged once
and counted (``runtime.setting``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from . import env, runtime
from .env import INT32_MAX, MODES, PROBES

__all__ = ["INT32_MAX", "MODES", "PROBES", "ProbeConfig", "probe_config", "reset"]

_FIELDS = (("mode", env.MODE), ("sample_every", env.SAMPLE_EVERY), ("contain_page", env.CONTAIN_PAGE),
           ("drain_ms", env.DRAIN_MS))


@dataclass
class ProbeConfig:
    """The probes' settings: ``mode`` (one of MODES), ``sample_every`` (probe every Nth call of a
    site), ``enabled`` checks (of PROBES), ``contain_page`` (the page contain mode redirects bad
    indices to) and ``drain_ms`` (milliseconds between drains of the GPU counters)."""

    mode: str = "observe"  # one of MODES
    sample_every: int = 1  # run the probes on every Nth call of a site
    enabled: frozenset[str] = field(default_factory=lambda: frozenset(PROBES))  # of PROBES
    contain_page: int = 0  # a page index (contain mode)
    drain_ms: int = 100  # milliseconds between drains of the GPU counters

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> tuple[ProbeConfig, list[str]]:
        """The config, plus one message per refused setting (the default was used instead)."""
        cfg, problems = cls(), []
        for attr, var in _FIELDS:
            r = var.read(environ)
            setattr(cfg, attr, r.value)
            if r.problem:
                problems.append(r.problem)
        r = env.CHECKS.read(environ)
        cfg.enabled = frozenset(r.value)
        if r.problem:
            problems.append(r.problem)
        return cfg, problems


_current: ProbeConfig | None = None


def probe_config() -> ProbeConfig:
    """This process's probe settings (from the environment on first use). Never raises."""
    global _current
    if _current is None:
        cfg, problems = ProbeConfig.from_env()
        if problems:
            runtime.writer()  # a ring now, so that the count reaches the daemon even if nothing else writes
        for msg in problems:
            runtime.config_problem(msg)
        runtime.set_mode(cfg.mode)
        _current = cfg
    return _current


def reset() -> None:
    """Forget the settings (tests): the next probe_config() reads the environment again."""
    global _current
    _current = None
