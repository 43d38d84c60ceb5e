"""What every framework adapter shares, in the style of OpenTelemetry's ``BaseInstrumentor``.

An adapter (a subclass of the abstract ``Adapter``)

- declares the framework versions it was verified against (``verified_versions``) and the range
  it claims (``supported_versions``); ``instrumentation_dependencies()`` gives both as requirement
  strings, and they are checked (see "Versions" below);
- patches lazily: ``instrument()`` only registers post-import hooks, and each hook point is
  patched when the serving process itself imports the module that holds it. Importing an adapter
  never imports its framework;
- restores every patch on ``uninstrument()``;
- fails soft, one check at a time. Each hook point serves a named *check* (``HookPoint.check``:
  "heartbeat", "paged_kv", "collectives", ...). A hook point that is missing in a framework
  version it does not know, or an error in the adapter's own code at run time for that check
  (``guard(..., check=...)``), logs one warning, counts an adapter error (in ``errors``, in
  ``runtime.errors`` and as an ``ADAPTER_ERROR_EVENT`` record in the ring) and turns that check
  off: its wrappers pass straight through to the framework from then on, and every other check
  stays on. ``checks()`` says which are on. Only a failure with no check to blame (a *required*
  hook point, an error in the base itself) disables the whole adapter: every patch is undone and
  the framework runs on untouched.

Template methods: ``instrument()`` and ``uninstrument()`` are the base's; a subclass gives
``hook_points()`` (abstract: what to patch, framework knowledge) and may override
``instrumentation_dependencies()`` and ``_forget()`` (drop its caches once unpatched). The base
writes once what every adapter needs: the framework's version and identity, the version check,
the heartbeat (``heartbeat()``), first-step identity reads (``once()``), the record-only stride
observer (``stride_observer()``) and the plugin entry point's body (``register_plugin()``).

Versions. When the framework's top-level module is imported (and in any case before the first of
the adapter's hook points is patched), the adapter reads the running framework's version
(``__version__``, else ``importlib.metadata.version`` of the first of ``distributions`` that is
installed) and compares it with ``instrumentation_dependencies()`` (``versions.check_version``:
release tuples, stdlib only). The verdict is ``status()["version_check"]``: ``"verified"`` (a pinned
version, a local label such as ``+cu128`` aside), ``"in range"``, ``"out of range"`` or
``"unknown"`` (no version found). Anything but "verified" logs one line. The verdict changes
nothing else, on purpose, unlike OpenTelemetry (which skips instrumenting on a conflict): out of
range, the adapter patches exactly as in range; every hook point whose names resolve keeps
working, and a missing one turns its check off as above. The name checks are the real guard. At the
first heartbeat one line says which release was found, its verdict, and which checks are on.

Only ``SentinelViolation`` (trap mode) ever leaves a patched function; that is the point of trap.
"""

from __future__ import annotations

import abc
import functools
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from .. import importhook, probes, runtime
from .. import ringformat as rf
from ..probes import SentinelViolation
from .versions import IN_RANGE, OUT_OF_RANGE, UNKNOWN, VERIFIED, check_version

__all__ = ["ADAPTER_ERROR_EVENT", "Adapter", "AdapterDrift", "HookPoint", "Names"]

# EVENT record code for an adapter error: a = 1, tag = "adapter:<name>". The daemon counts them
# as sentinel_adapter_errors_total{adapter=<name>}.
ADAPTER_ERROR_EVENT = rf.ADAPTER_ERROR_EVENT

_MISSING = object()
# Names an adapter relies on, each (module, "Name" | "Class.attr"), resolved in a release's source
# (``adapters.source``) by the tests and by `sentinel doctor`.
Names = tuple[tuple[str, str], ...]
Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]  # make_wrapper(original) -> wrapper


class AdapterDrift(Exception):
    """A hook point (module attribute, class, method, field) the adapter relies on is missing."""


class HookPoint:
    """One module an adapter patches when it is imported: ``patch(module)`` does the work.

    ``check``: the check it serves; a failure turns that check off and nothing else. Without one
    (``required``), a failure disables the adapter."""

    def __init__(self, module: str, patch: Callable[[ModuleType], None], *, check: str = "") -> None:
        self.module = module
        self.patch = patch
        self.check = check

    @property
    def required(self) -> bool:
        return not self.check


class Adapter(abc.ABC):
    """Base of a framework adapter (see the module docstring): a subclass sets ``name``, ``module``,
    ``distributions``, ``verified_versions`` and ``supported_versions`` and gives ``hook_points()``.
    ``instrument`` and ``uninstrument`` never raise."""

    name = ""  # bounded label: "vllm", "sglang"
    module = ""  # the framework's top-level module
    distributions: tuple[str, ...] = ()  # the framework's distribution names on PyPI
    verified_versions: tuple[str, ...] = ()  # the versions whose source this adapter was checked against
    # The range it claims, as (lowest, first excluded) release strings, e.g. ("0.32", "0.34").
    # ("", ""): no range beyond the verified versions.
    supported_versions: tuple[str, str] = ("", "")

    def __init__(self) -> None:
        self.instrumented = False
        self.disabled: str | None = None  # why, once disabled
        self.errors = 0
        self.framework_version: str | None = None
        self.distribution: str | None = None  # the installed distribution found, if any
        self.version_check: str | None = None  # VERIFIED, IN_RANGE, OUT_OF_RANGE, UNKNOWN
        self.patched_modules: list[str] = []
        self._patches: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, what it held, our wrapper)
        self._propagated: list[tuple[Any, Any]] = []  # (wrapper, original) bound by name elsewhere too
        self._generation = 0
        self._lock = threading.RLock()
        self._once: set[str] = set()
        self._stride_sites_tripped: set[str] = set()
        self._hooked: dict[str, list[str]] = {}  # check -> how it is hooked (its hook points' modules, or a detail)
        self._hook_failed: dict[str, list[str]] = {}  # check -> why hook points of it could not be patched
        self._stopped: dict[str, str] = {}  # check -> why it was turned off at run time
        self._described: set[str] = set()  # checks whose hook said how they are hooked (hooked())

    # -- what a subclass gives ---------------------------------------------------------------------

    @abc.abstractmethod
    def hook_points(self) -> Iterable[HookPoint]:
        """The framework's modules to patch, each when imported (the framework module itself is
        the base's: its version check and identity)."""

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        """Requirement strings, alternatives (any one satisfied is enough, like OpenTelemetry's
        ``_instruments_any``): a pin per distribution and verified version, e.g.
        ``"vllm == 0.32.0"``, then a range per distribution, e.g. ``"vllm >= 0.32, < 0.34"``."""
        pins = tuple(f"{d} == {v}" for d in self.distributions for v in self.verified_versions)
        low, high = self.supported_versions
        ranges = tuple(f"{d} >= {low}, < {high}" for d in self.distributions) if low and high else ()
        return pins + ranges

    def _forget(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Drop per-process caches once ``uninstrument()`` has undone every patch (default: none)."""

    # -- OpenTelemetry-style surface ---------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.instrumented and self.disabled is None

    def instrument(self) -> bool:
        """Register the post-import hooks (patching at once what is already imported): the
        framework module's (version check, identity), then ``hook_points()``.

        Idempotent. Returns whether the adapter is active. Never raises."""
        with self._lock:
            if self.instrumented or self.disabled is not None:
                return self.active
            self.instrumented = True
            self._generation += 1
            generation = self._generation
        try:
            for point in [HookPoint(self.module, self._on_framework), *self.hook_points()]:
                guarded = self._guarded(point, generation)
                if point.module == self.module or point.module.startswith(self.module + "."):
                    importhook.when_imported(point.module, guarded)
                else:  # another library's module (flashinfer.comm): every adapter is armed in every
                    # process, so hook it only once this framework is imported here
                    importhook.when_imported(self.module, lambda _m, name=point.module, hook=guarded:
                                             importhook.when_imported(name, hook))
        except Exception as exc:
            self.fail("instrument", exc)
        return self.active

    def uninstrument(self) -> None:
        """Undo every patch, then ``_forget()``. Hooks registered for modules not yet imported
        become no-ops. Never raises."""
        with self._lock:
            self.instrumented = False
            self._generation += 1
            patches, self._patches = self._patches, []
            propagated, self._propagated = self._propagated, []
            self.patched_modules = []
            self._hooked, self._hook_failed, self._stopped = {}, {}, {}  # a new instrument() starts over
            self._described = set()
        self._restore(patches)
        for wrapper, original in propagated:  # modules that imported the wrapper by name meanwhile
            for _name, module, attr in _bindings_of(wrapper):
                try:
                    setattr(module, attr, original)
                except Exception:  # pragma: no cover
                    pass
        try:
            self._forget()
        except Exception as exc:  # pragma: no cover - clearing a cache does not fail
            runtime.failed(f"adapter {self.name} forget", exc)

    def _restore(self, patches: list[tuple[Any, str, Any, Any]]) -> None:
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

    def status(self) -> dict[str, Any]:
        """State for ``sentinel status`` and tests: active, disabled (why), errors, the framework
        version seen and its verdict (``version_check``), what is patched, ``checks()``."""
        return {"adapter": self.name, "active": self.active, "instrumented": self.instrumented,
                "disabled": self.disabled, "errors": self.errors, "framework_version": self.framework_version,
                "distribution": self.distribution, "version_check": self.version_check,
                "verified_versions": list(self.verified_versions),
                "supported_versions": list(self.supported_versions), "patched_modules": list(self.patched_modules),
                "checks": self.checks()}

    def checks(self) -> dict[str, str]:
        """Each check seen so far -> ``"on (how)"`` or ``"off: why"``. A check whose module the
        process has not imported yet is absent. All off once the adapter is disabled."""
        out = {}
        for check in sorted({*self._hooked, *self._hook_failed, *self._stopped}):
            hooked, failed = self._hooked.get(check, []), self._hook_failed.get(check, [])
            if self.disabled is not None:
                out[check] = "off: adapter disabled"
            elif check in self._stopped:
                out[check] = f"off: {self._stopped[check]}"
            elif hooked and failed:  # some of its hook points only (a stride repair in one backend of several)
                out[check] = f"on ({', '.join(hooked)}; not at: {'; '.join(failed)})"
            elif hooked:
                out[check] = f"on ({', '.join(hooked)})"
            else:
                out[check] = f"off: {'; '.join(failed)}"
        return out

    def on(self, check: str) -> bool:
        """Whether ``check``'s wrappers should do their work: the adapter is active and the check
        was not turned off at run time."""
        return self.active and check not in self._stopped

    def hooked(self, check: str, how: str) -> None:
        """Say how ``check`` is hooked (shown by ``checks()``), e.g. which of a release's entry
        points was patched; it replaces the hook point's module as the description."""
        self._hooked[check] = [how]
        self._described.add(check)

    def turn_off(self, check: str, what: str, exc: BaseException | None = None) -> None:
        """Count one adapter error, log it once, and turn ``check`` off for the life of the process
        (its wrappers pass through); the other checks stay on."""
        if check in self._stopped:
            return
        self._stopped[check] = f"{what}: {type(exc).__name__}: {exc}" if exc is not None else what
        self.error(f"check {check} off: {what}", exc)

    def register_plugin(self) -> None:
        """The body of the framework's plugin entry point (``register()`` in each adapter module):
        arm the hooks as ``sentinel run`` does, and this adapter even if SENTINEL_ADAPTERS leaves
        it out (unless it is "none"). Never raises: a plugin must never break the host's start-up."""
        try:
            from .. import inject

            inject.arm()
            from . import arm

            arm(only=(self.name,), force=True)
        except Exception as exc:
            runtime.failed(f"{self.name} plugin register", exc)

    # -- the framework module: version check and identity ------------------------------------------

    def _on_framework(self, module: ModuleType | None) -> None:
        """Read and check the framework's version, once, and publish the framework identity."""
        with self._lock:
            if self.version_check is not None:
                return
            self.version_check = UNKNOWN
        version, self.distribution = _framework_version(module, self.distributions)
        self.framework_version = version or ""
        try:
            self.version_check = check_version(version, self.instrumentation_dependencies(), self.distribution)
        except ValueError as exc:  # a requirement string of ours that does not parse: counted, not fatal
            self.error("version check", exc)
        if self.version_check != VERIFIED:
            low, high = self.supported_versions
            declared = f"its declared range (>= {low}, < {high})" if low and high else ""
            verdict = {IN_RANGE: f" but is in {declared}" if declared else " but is one up to a release suffix",
                       OUT_OF_RANGE: f" and is out of {declared}" if declared else "", UNKNOWN: ""}[self.version_check]
            runtime.log_once(f"adapter-version:{self.name}", "%s adapter: %s %s is not a version it was verified "
                             "against (%s)%s; patching anyway: a check whose hook point is missing turns itself off",
                             self.name, self.module, version or "unknown", ", ".join(self.verified_versions), verdict)
        runtime.set_identity(framework=self.name, framework_version=(version or "")[:31])

    # -- helpers for subclasses --------------------------------------------------------------------

    def _guarded(self, point: HookPoint, generation: int) -> Callable[[ModuleType], None]:
        def on_import(module: ModuleType) -> None:
            if generation != self._generation or not self.active:
                return
            with self._lock:
                done = len(self._patches)
            try:
                if self.version_check is None and point.module != self.module:
                    # a framework module imported before its package's hook ran: check first
                    self._on_framework(sys.modules.get(self.module))
                point.patch(module)
                self.patched_modules.append(point.module)
                if point.check and point.check not in self._described:
                    self._hooked.setdefault(point.check, []).append(point.module)
            except Exception as exc:
                if point.required:
                    self.fail(f"hook point {point.module}", exc)
                else:
                    with self._lock:  # what this point patched before it failed is undone: all or nothing
                        partial, self._patches = self._patches[done:], self._patches[:done]
                    self._restore(partial)
                    self._hook_failed.setdefault(point.check, []).append(
                        f"hook point {point.module}: {type(exc).__name__}: {exc}")
                    self.error(f"check {point.check}: hook point {point.module} not patched", exc)

        return on_import

    def require(self, obj: Any, *attrs: str) -> None:
        """Raise AdapterDrift unless ``obj`` has every attribute in ``attrs``."""
        missing = [a for a in attrs if not hasattr(obj, a)]
        if missing:
            where = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
            raise AdapterDrift(f"{where} has no {', '.join(missing)}")

    def patch(self, owner: Any, attr: str, make_wrapper: Wrapper) -> None:
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

    def patch_collectives(self, module: ModuleType, class_name: str, methods: dict[str, tuple[str, int]]) -> None:
        """Trace an engine's collectives: patch ``class_name``'s methods with
        ``collectives.engine_collective``, ``methods`` mapping each method to (op, position of its
        tensor argument after self). A method this release lacks is skipped, logged once; with
        SENTINEL_COLLECTIVES=0 nothing is patched. Raises AdapterDrift when the class is missing."""
        from .. import collectives, env

        self.require(module, class_name)
        if not runtime.setting(env.COLLECTIVES) or not collectives.install():
            return
        cls = getattr(module, class_name)
        missing = [name for name in methods if not callable(getattr(cls, name, None))]
        if missing:
            runtime.log_once(f"{self.name}:collectives", "%s: %s.%s has no %s; those collectives are not traced",
                             self.name, module.__name__, class_name, ", ".join(missing))
        for name, (op, at) in methods.items():
            if name not in missing:
                self.patch(cls, name, lambda original, op=op, at=at: collectives.engine_collective(original, op, at))

    def patch_fused_allreduce(self, module: ModuleType, group_of: Callable[[tuple, dict], Any]) -> None:
        """Trace FlashInfer's fused all-reduce + RMSNorm (``flashinfer.comm.allreduce_fusion``, which
        the engines call past GroupCoordinator) as an all-reduce of the engine group ``group_of(args,
        kwargs)`` names for each call (``collectives.engine_function_collective``). Both engines look
        the function up on the module at each call, so patching the module reaches them. With
        SENTINEL_COLLECTIVES=0 nothing is patched. Raises AdapterDrift when FlashInfer has no
        ``allreduce_fusion``."""
        from .. import collectives, env

        self.require(module, "allreduce_fusion")
        if not runtime.setting(env.COLLECTIVES) or not collectives.install():
            return
        self.patch(module, "allreduce_fusion",
                   lambda original: collectives.engine_function_collective(original, "all_reduce", group_of, "input"))

    def patch_everywhere(self, module: ModuleType, attr: str, make_wrapper: Wrapper) -> None:
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

    def heartbeat(self) -> None:
        """One serving step of this process (``sentinel_hooks.step()``), while the adapter is
        active: the heartbeat in the ring header and a STEP record. The first one logs which
        release was found and which checks are on. Never raises."""
        if not self.active:
            return
        if "startup line" not in self._once:
            self._once.add("startup line")
            self.log_checks()
        try:
            runtime.writer().step()
        except Exception as exc:
            runtime.failed("step", exc)

    def log_checks(self) -> None:
        """One line: the release found, its verdict against the declared range, the checks on and off."""
        low, high = self.supported_versions
        verdict = self.version_check or UNKNOWN
        declared = f"; supported >= {low}, < {high}" if low and high else ""
        on = [f"{c} {v[3:]}" for c, v in self.checks().items() if v.startswith("on")]
        off = [f"{c} ({v[5:]})" for c, v in self.checks().items() if v.startswith("off")]
        runtime.log_once(f"adapter-checks:{self.name}", "%s adapter: %s %s (%s%s); checks on: %s%s", self.name,
                         self.distribution or self.module, self.framework_version or "unknown", verdict, declared,
                         ", ".join(on) or "none", f"; off: {', '.join(off)}" if off else "")

    def once(self, where: str, fn: Callable[..., Any], *args: Any, check: str | None = None) -> None:
        """``guard(where, fn, *args, check=check)`` the first time ``where`` comes up (an identity
        read on the first step), never again; nothing while the adapter is inactive."""
        if not self.active or where in self._once:
            return
        self._once.add(where)
        self.guard(where, fn, *args, check=check)

    def stride_observer(self, site: str, check: str = "strides") -> Wrapper:
        """make_wrapper for a framework function that silently repairs a size-1 dimension's stride
        (seed 002): ``check_strides`` sees its first argument before the repair, under ``site``.
        Record only: a trap records (and keeps evidence) once per site and never raises; the
        original always runs and its result is returned."""
        adapter = self

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def observed(tensor: Any, *args: Any, **kwargs: Any) -> Any:
                if adapter.on(check) and site not in adapter._stride_sites_tripped:
                    try:
                        probes.check_strides(tensor, name=site, tma=False)  # degenerate size-1 strides only
                    except SentinelViolation:
                        adapter._stride_sites_tripped.add(site)
                    except Exception as exc:  # pragma: no cover - check_strides does not raise
                        runtime.failed(site, exc)
                return original(tensor, *args, **kwargs)

            return observed

        return make

    def error(self, what: str, exc: BaseException | None = None) -> None:
        """Count one adapter error and log it once (per kind)."""
        self.errors += 1
        runtime.errors += 1
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        version = self.framework_version or "unknown"
        if self.version_check not in (None, VERIFIED, UNKNOWN):
            version = f"{version} ({self.version_check})"
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

    def guard(self, where: str, fn: Callable[..., Any], *args: Any, check: str | None = None, **kwargs: Any) -> Any:
        """Run the adapter's own per-step code for ``check``: SentinelViolation passes; anything
        else turns ``check`` off (``turn_off``), or disables the adapter when there is no check."""
        if not self.active or (check is not None and check in self._stopped):
            return None
        try:
            return fn(*args, **kwargs)
        except SentinelViolation:
            raise
        except Exception as exc:
            if check is None:
                self.fail(where, exc)
            else:
                self.turn_off(check, where, exc)
            return None


def _framework_version(module: ModuleType | None, distributions: Sequence[str]) -> tuple[str | None, str | None]:
    """(version, distribution): the module's ``__version__``, else the first installed
    distribution's; the distribution is the first of ``distributions`` installed, if any."""
    version = getattr(module, "__version__", None) if module is not None else None
    version = str(version) if version else None
    distribution = None
    try:
        import importlib.metadata as md

        for dist in distributions:
            try:
                found = md.version(dist)
            except md.PackageNotFoundError:
                continue
            distribution = dist
            version = version or found
            break
    except Exception:  # metadata is a hint: a broken dist-info must not cost the adapter
        pass
    return version, distribution


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
