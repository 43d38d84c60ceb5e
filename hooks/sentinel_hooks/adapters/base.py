"""What every framework adapter shares, in the style of OpenTelemetry's instrumentors.

An adapter

- declares the framework versions it was verified against (``verified_versions``;
  ``instrumentation_dependencies()`` gives them as requirement strings);
- patches lazily: ``instrument()`` only registers post-import hooks, and each hook point is
  patched when the serving process itself imports the module that holds it. Importing an adapter
  never imports its framework;
- restores every patch on ``uninstrument()``;
- fails soft. A hook point it needs that is missing (a framework version it does not know), or
  an error in its own code at run time, logs one warning, counts an adapter error (in
  ``errors``, in ``runtime.errors`` and as an ``ADAPTER_ERROR_EVENT`` record in the ring) and
  disables the adapter: every patch is undone and the framework runs on untouched. A missing
  *optional* hook point costs only that point (same warning and count, the rest stays on).

Only ``SentinelViolation`` (trap mode) ever leaves a patched function; that is the point of trap.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from .. import importhook, runtime
from .. import ringformat as rf
from ..probes import SentinelViolation

# EVENT record code for an adapter error: a = 1, tag = "adapter:<name>". The daemon counts them
# as sentinel_adapter_errors_total{adapter=<name>}.
ADAPTER_ERROR_EVENT = rf.ADAPTER_ERROR_EVENT

_MISSING = object()


class AdapterDrift(Exception):
    """A hook point (module attribute, class, method, field) the adapter relies on is missing."""


class HookPoint:
    """One module an adapter patches when it is imported: ``patch(module)`` does the work."""

    def __init__(self, module: str, patch: Callable[[ModuleType], None], *, required: bool = True) -> None:
        self.module = module
        self.patch = patch
        self.required = required


class Adapter:
    name = ""  # bounded label: "vllm", "sglang"
    module = ""  # the framework's top-level module
    distributions: tuple[str, ...] = ()  # the framework's distribution names on PyPI
    verified_versions: tuple[str, ...] = ()  # the versions whose source this adapter was checked against

    def __init__(self) -> None:
        self.instrumented = False
        self.disabled: str | None = None  # why, once disabled
        self.errors = 0
        self.framework_version: str | None = None
        self.patched_modules: list[str] = []
        self._patches: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, what it held, our wrapper)
        self._propagated: list[tuple[Any, Any]] = []  # (wrapper, original) bound by name elsewhere too
        self._generation = 0
        self._lock = threading.RLock()

    # -- OpenTelemetry-style surface ---------------------------------------------------------------

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        """Requirement strings for the verified versions, e.g. ``("vllm == 0.32.0", ...)``."""
        return tuple(f"{d} == {v}" for d in self.distributions for v in self.verified_versions)

    def hook_points(self) -> Iterable[HookPoint]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return self.instrumented and self.disabled is None

    def instrument(self) -> bool:
        """Register the post-import hooks (patching at once what is already imported).

        Idempotent. Returns whether the adapter is active. Never raises."""
        with self._lock:
            if self.instrumented or self.disabled is not None:
                return self.active
            self.instrumented = True
            self._generation += 1
            generation = self._generation
        try:
            for point in self.hook_points():
                importhook.when_imported(point.module, self._guarded(point, generation))
        except Exception as exc:
            self.fail("instrument", exc)
        return self.active

    def uninstrument(self) -> None:
        """Undo every patch. Hooks registered for modules not yet imported become no-ops."""
        with self._lock:
            self.instrumented = False
            self._generation += 1
            patches, self._patches = self._patches, []
            propagated, self._propagated = self._propagated, []
            self.patched_modules = []
        for owner, attr, saved, wrapper in reversed(patches):
            try:
                if getattr(owner, attr, None) is not wrapper:
                    continue  # someone wrapped over us since: leave theirs (ours passes through now)
                if saved is _MISSING:
                    delattr(owner, attr)
                else:
                    setattr(owner, attr, saved)
            except Exception as exc:  # pragma: no cover - restoring a plain attribute does not fail
                runtime.log_once(f"adapter-restore:{self.name}:{attr}", "%s adapter: could not restore %s (%s)",
                                 self.name, attr, exc)
        for wrapper, original in propagated:  # modules that imported the wrapper by name meanwhile
            for _name, module, attr in _bindings_of(wrapper):
                try:
                    setattr(module, attr, original)
                except Exception:  # pragma: no cover
                    pass

    def status(self) -> dict[str, Any]:
        return {"adapter": self.name, "active": self.active, "instrumented": self.instrumented,
                "disabled": self.disabled, "errors": self.errors, "framework_version": self.framework_version,
                "verified_versions": list(self.verified_versions), "patched_modules": list(self.patched_modules)}

    # -- helpers for subclasses --------------------------------------------------------------------

    def _guarded(self, point: HookPoint, generation: int) -> Callable[[ModuleType], None]:
        def on_import(module: ModuleType) -> None:
            if generation != self._generation or not self.active:
                return
            try:
                point.patch(module)
                self.patched_modules.append(point.module)
            except Exception as exc:
                if point.required:
                    self.fail(f"hook point {point.module}", exc)
                else:
                    self.error(f"optional hook point {point.module} skipped", exc)

        return on_import

    def require(self, obj: Any, *attrs: str) -> None:
        """Raise AdapterDrift unless ``obj`` has every attribute in ``attrs``."""
        missing = [a for a in attrs if not hasattr(obj, a)]
        if missing:
            where = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
            raise AdapterDrift(f"{where} has no {', '.join(missing)}")

    def patch(self, owner: Any, attr: str, make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Replace ``owner.attr`` (a function or method) by ``make_wrapper(original)``.

        Raises AdapterDrift when the attribute is missing or not callable. A second call for the
        same attribute is a no-op, so a plugin entry point and ``sitecustomize`` can both arm."""
        self.require(owner, attr)
        current = getattr(owner, attr)
        if getattr(current, "__sentinel_adapter__", None) == self.name:
            return
        if not callable(current):
            raise AdapterDrift(f"{getattr(owner, '__qualname__', owner)}.{attr} is not callable")
        if isinstance(owner, type):
            raw = owner.__dict__.get(attr, _MISSING)
            if isinstance(raw, staticmethod | classmethod):
                raise AdapterDrift(f"{owner.__qualname__}.{attr} is a {type(raw).__name__}, expected a method")
        else:
            raw = getattr(owner, "__dict__", {}).get(attr, _MISSING)
        wrapper = make_wrapper(current)
        functools.update_wrapper(wrapper, current)
        wrapper.__sentinel_adapter__ = self.name  # type: ignore[attr-defined]
        wrapper.__sentinel_original__ = current  # type: ignore[attr-defined]
        with self._lock:
            setattr(owner, attr, wrapper)
            self._patches.append((owner, attr, raw, wrapper))

    def patch_everywhere(self, module: ModuleType, attr: str,
                         make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        """Patch a module-level function where it is defined and in every module that already
        bound it by name (``from m import f``); modules importing it later bind the wrapper.
        ``uninstrument()`` puts the original back everywhere, those later bindings included."""
        self.patch(module, attr, make_wrapper)
        wrapper = getattr(module, attr)
        original = getattr(wrapper, "__sentinel_original__", None)
        if original is None:
            return
        with self._lock:
            self._propagated.append((wrapper, original))
        for _name, other, other_attr in _bindings_of(original):
            if other is not module:
                setattr(other, other_attr, wrapper)
                with self._lock:
                    self._patches.append((other, other_attr, original, wrapper))

    def error(self, what: str, exc: BaseException | None = None) -> None:
        """Count one adapter error and log it once (per kind)."""
        self.errors += 1
        runtime.errors += 1
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        version = self.framework_version or "unknown"
        runtime.log_once(f"adapter:{self.name}:{what}",
                         "%s adapter: %s (%s); %s %s, verified against %s", self.name, what, detail,
                         self.module, version, ", ".join(self.verified_versions) or "none")
        try:
            w = runtime.writer()
            w.emit(rf.Kind.EVENT, ADAPTER_ERROR_EVENT, 1, 0, 0, w.intern(f"adapter:{self.name}"))
        except Exception:
            pass

    def fail(self, what: str, exc: BaseException | None = None) -> None:
        """Count an error, log one warning, and disable the adapter (undo every patch)."""
        with self._lock:
            if self.disabled is not None:
                return
            self.disabled = f"{what}: {type(exc).__name__}: {exc}" if exc is not None else what
        self.error(f"disabled, {self.module} runs on unobserved: {what}", exc)
        self.uninstrument()

    def guard(self, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the adapter's own per-step code: SentinelViolation passes, anything else disables."""
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except SentinelViolation:
            raise
        except Exception as exc:
            self.fail(where, exc)
            return None


def _bindings_of(obj: Any) -> list[tuple[str, ModuleType, str]]:
    """(module name, module, attribute) for every loaded module attribute that is ``obj``."""
    out = []
    for name, module in list(sys.modules.items()):
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        out.extend((name, module, attr) for attr, value in items if value is obj)
    return out
