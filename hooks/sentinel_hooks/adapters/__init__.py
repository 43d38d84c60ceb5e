"""Framework adapters: the probes at vLLM's and SGLang's own choke points, with no code change.

``TABLE`` lists the adapters (name -> module, plugin entry-point group); ``ADAPTERS`` and the
entry points (``ENTRY_POINTS``) derive from it. ``arm()`` (called by ``sentinel_hooks.inject.arm()``, so by the injected ``sitecustomize`` and by
the frameworks' plugin entry points) registers each adapter's post-import hooks. Nothing here
imports a framework: an adapter patches a module when the serving process imports it.

    SENTINEL_ADAPTERS   comma list of adapters to arm (default: all of TABLE); "none" arms none

Each adapter fails soft (see base.py): a hook point missing in a framework version it does not
know disables it with one warning and a counted adapter error; the framework runs on untouched.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, NamedTuple

from .. import env, runtime

__all__ = ["ADAPTERS", "ENTRY_POINTS", "ENTRY_POINT_NAME", "TABLE", "AdapterEntry", "arm", "enabled", "get",
           "status"]

ENTRY_POINT_NAME = "sentinel"  # our name in each framework's plugin group


class AdapterEntry(NamedTuple):
    """One adapter: the module holding ``ADAPTER`` (an Adapter instance) and ``register()`` (its
    framework's plugin entry point), and the entry-point group the framework loads plugins from."""

    module: str
    group: str

    @property
    def entry_point(self) -> str:
        """The entry point's value, ``module:register``."""
        return f"{self.module}:register"


# The one table. ADAPTERS and ENTRY_POINTS derive from it; pyproject.toml's
# [project.entry-points.*] cannot import it, so tests/test_adapter_table.py holds them equal.
TABLE: dict[str, AdapterEntry] = {
    "vllm": AdapterEntry("sentinel_hooks.adapters.vllm", "vllm.general_plugins"),
    "sglang": AdapterEntry("sentinel_hooks.adapters.sglang", "sglang.srt.plugins"),
}

# name -> module holding ADAPTER and register()
ADAPTERS: dict[str, str] = {name: entry.module for name, entry in TABLE.items()}

# group -> {name: value}: the frameworks' plugin entry points. ``sentinel run`` and
# ``sentinel install-hooks`` also write them into a dist-info next to the copied hooks, so the
# plugin route works from PYTHONPATH alone, with nothing installed in the serving environment.
ENTRY_POINTS: dict[str, dict[str, str]] = {}
for _entry in TABLE.values():
    ENTRY_POINTS.setdefault(_entry.group, {})[ENTRY_POINT_NAME] = _entry.entry_point
del _entry


def enabled(environ: dict[str, str] | None = None) -> list[str]:
    """The adapters SENTINEL_ADAPTERS names (env.ADAPTERS): all of TABLE by default or for "all", none
    for "none" ("0", "off"); unknown names are left out, logged once and counted."""
    reading = env.ADAPTERS.read(environ)
    if reading.problem:
        runtime.config_problem(reading.problem)
    return [n for n in reading.value if n in ADAPTERS]


def get(name: str) -> Any:
    """The adapter instance ``name`` (imports its module, never its framework)."""
    return importlib.import_module(ADAPTERS[name]).ADAPTER


def arm(only: Iterable[str] | None = None, force: bool = False) -> list[str]:
    """Instrument the enabled adapters (``only``: a subset). Returns the names armed. Never raises.

    ``force`` arms the adapters in ``only`` even when SENTINEL_ADAPTERS leaves them out (a
    framework's plugin entry point that the user enabled), unless SENTINEL_ADAPTERS is "none"."""
    armed = []
    names = enabled()
    if only is not None:
        only = list(only)
        none = (env.ADAPTERS.read().raw or "").strip().lower() in env.NONE_WORDS
        names = [n for n in only if n in ADAPTERS and (n in names or (force and not none))]
    for name in names:
        try:
            if get(name).instrument():
                armed.append(name)
        except Exception as exc:
            runtime.failed(f"adapter {name}", exc)
    return armed


def status() -> list[dict[str, Any]]:
    """Each imported adapter's state: active, disabled (why), errors, the framework version seen."""
    import sys

    out = []
    for module in ADAPTERS.values():
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, "ADAPTER"):
            out.append(mod.ADAPTER.status())
    return out
