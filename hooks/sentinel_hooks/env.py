"""Every SENTINEL_* environment variable, declared once: name, type, default, one line of doc.

Both sides read them through these declarations: the hooks in the serving process (through
``runtime.setting``, which logs a bad value once and counts it in the ring, exported as
``sentinel_hook_config_errors_total``) and the sidecar (``sentinel run``, ``sentinel daemon``).
A bad value never raises into the serving process: the declared default is used instead, and the
value is reported, the same way for every variable. The three file-mode variables are the
exception the hooks make on purpose: a mode that cannot be honoured turns the hooks off (one line,
no ring) rather than create files with permissions nobody asked for.

Imports only the standard library (``sitecustomize`` reads some of these before anything else).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .ringformat import DEFAULT_CAPACITY, MAX_CAPACITY

__all__ = ["Var", "Reading", "VARS", "by_name", "read"]

MODES = ("observe", "trap", "contain")
PROBES = ("paged_kv", "strides", "batch")
ADAPTER_NAMES = ("vllm", "sglang")
INT32_MAX = (1 << 31) - 1
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")
NONE_WORDS = ("none", "0", "off")  # "names" variables with keywords: none of them


class _Partly(ValueError):
    def __init__(self, message: str, value: Any) -> None:
        super().__init__(message)
        self.value = value


@dataclass(frozen=True)
class Reading:
    """A variable's value as read: ``raw`` is the text found (None: unset), ``problem`` a one-line
    message when that text was refused and ``value`` is the default instead."""

    value: Any
    raw: str | None
    problem: str | None = None


@dataclass(frozen=True)
class Var:
    """One SENTINEL_* variable.

    ``kind``: "flag" (1/0, true/false, yes/no, on/off; set but empty counts as off), "int" (from
    ``low`` to ``high``; ``power_of_two`` if it must be one), "choice" (one of ``choices``),
    "names" (a comma list of ``choices``; unknown names are reported and left out; with ``keywords``,
    also "all", and "none" / "0" / "off" for none), "octal"
    (file mode bits), "text" (anything, stripped; empty counts as unset).
    """

    name: str
    kind: str
    default: Any
    doc: str
    low: int = 0
    high: int = INT32_MAX
    power_of_two: bool = False
    choices: tuple[str, ...] = ()
    bad: Any = None  # the value a refused flag takes (default: ``default``)
    keywords: bool = False  # "names": also "all", and "none" / "0" / "off" for none

    def read(self, environ: Mapping[str, str] | None = None) -> Reading:
        """Parse this variable from ``environ`` (default: os.environ). Never raises."""
        env = os.environ if environ is None else environ
        raw = env.get(self.name)
        if raw is None:
            return Reading(self.default, None)
        text = raw.strip()
        try:
            return Reading(self._parse(text), raw)
        except _Partly as exc:  # a list with unknown names: the known ones are used
            return Reading(exc.value, raw, f"{self.name}={text[:40]!r} {exc}; using {self._show(exc.value)}")
        except ValueError as exc:
            value = self.default if self.bad is None else self.bad
            return Reading(value, raw, f"{self.name}={text[:40]!r} {exc}; using {self._show(value)}")

    def _parse(self, text: str) -> Any:
        kind = self.kind
        if kind == "flag":
            low = text.lower()
            if low in _FALSE or low == "":
                return False
            if low in _TRUE:
                return True
            raise ValueError("is not a flag (1/0, true/false, yes/no, on/off)")
        if kind == "text":
            return text or self.default
        if not text:
            return self.default
        if kind == "int":
            try:
                value = int(text)
            except ValueError:
                value = None
            ok = value is not None and self.low <= value <= self.high
            if ok and self.power_of_two and value & (value - 1):
                ok = False
            if not ok:
                two = "a power of two" if self.power_of_two else "an integer"
                raise ValueError(f"is not {two} from {self.low} to {self.high}")
            return value
        if kind == "choice":
            if text.lower() not in self.choices:
                raise ValueError(f"is not one of {', '.join(self.choices)}")
            return text.lower()
        if kind == "names":
            low = text.lower()
            if self.keywords and low == "all":
                return self.choices
            if self.keywords and low in NONE_WORDS:
                return ()
            wanted = tuple(dict.fromkeys(n.strip() for n in low.split(",") if n.strip()))
            unknown = [n for n in wanted if n not in self.choices]
            if unknown:
                raise _Partly(f"names unknown ones {sorted(u[:40] for u in unknown)[:8]} (known: "
                              f"{', '.join(self.choices)})", tuple(n for n in wanted if n in self.choices))
            return wanted
        if kind == "octal":
            try:
                value = int(text, 8)
            except ValueError:
                value = -1
            if not 0 <= value <= 0o7777:
                raise ValueError("is not an octal file mode")
            return value
        raise AssertionError(f"unknown kind {kind}")

    def _show(self, value: Any) -> str:
        if self.kind == "flag":
            return "on" if value else "off"
        if self.kind == "names":
            return ",".join(value) if value else "none"
        if self.kind == "octal" and value is not None:
            return oct(value)
        return "the default" if value is None else str(value)


def _flag(name: str, default: bool, doc: str, bad: bool | None = None) -> Var:
    return Var(name, "flag", default, doc, bad=bad)


# In the order the README documents them.
DIR = Var("SENTINEL_DIR", "text", None, "where rings, coredumps and dumps go (default: $XDG_RUNTIME_DIR/sentinel-UID, "
          "else TMPDIR/sentinel-UID)")
DISABLE = _flag("SENTINEL_DISABLE", False, "turn every hook into a counted no-op", bad=True)
MODE = Var("SENTINEL_MODE", "choice", "observe", "observe: record violations; trap: raise SentinelViolation before "
           "the kernel runs; contain: redirect bad page indices to SENTINEL_CONTAIN_PAGE", choices=MODES)
CHECKS = Var("SENTINEL_CHECKS", "names", PROBES, "comma list of the probes to run: paged_kv, strides, batch",
             choices=PROBES)
SAMPLE_EVERY = Var("SENTINEL_SAMPLE_EVERY", "int", 1, "run the probes on every Nth call of each probe site", low=1)
CONTAIN_PAGE = Var("SENTINEL_CONTAIN_PAGE", "int", 0, "the reserved page contain mode redirects bad indices to (one "
                   "the allocator never hands out, inside every checked cache)")
DRAIN_MS = Var("SENTINEL_DRAIN_MS", "int", 100, "how often the drain thread copies the GPU probe counters out, in "
               "milliseconds", low=1, high=3_600_000)
RING_CAPACITY = Var("SENTINEL_RING_CAPACITY", "int", DEFAULT_CAPACITY, "records per ring (a power of two)", low=1,
                    high=MAX_CAPACITY, power_of_two=True)
EAGER = _flag("SENTINEL_EAGER", False, "create the ring at start-up, not at the first hook call")
COLLECTIVES = _flag("SENTINEL_COLLECTIVES", True, "trace torch.distributed collectives and the engines' own "
                    "(vLLM's and SGLang's GroupCoordinator)")
MARKS = ("first", "all", "off")
COLLECTIVE_MARKS = Var("SENTINEL_COLLECTIVE_MARKS", "choice", "first", "what the GPU has reached, in the ring's "
                       "device words: a one-element kernel before each collective on a CUDA tensor; in a CUDA "
                       "graph before the first collective of each group only (first), or before every one (all), "
                       "or none (off)", choices=MARKS)
ADAPTERS = Var("SENTINEL_ADAPTERS", "names", ADAPTER_NAMES, "framework adapters to arm: all, none, or a comma list "
               "of vllm, sglang", choices=ADAPTER_NAMES, keywords=True)
COREDUMP = _flag("SENTINEL_COREDUMP", True, "point CUDA's GPU coredumps at SENTINEL_DIR/cores")
FAULTHANDLER = _flag("SENTINEL_FAULTHANDLER", True, "dump every thread's Python stack on a fatal signal")
EXCEPTHOOK = _flag("SENTINEL_EXCEPTHOOK", True, "record an uncaught exception's text in the ring")
GROUP = Var("SENTINEL_GROUP", "text", None, "share what Sentinel creates with this group (name or gid): setgid "
            "folders 2770, files 0640")
DIR_MODE = Var("SENTINEL_DIR_MODE", "octal", None, "the mode of the folders Sentinel creates (default 0700, or 2770 "
               "with SENTINEL_GROUP); a bad value turns the hooks off")
FILE_MODE = Var("SENTINEL_FILE_MODE", "octal", None, "the mode of the files Sentinel creates (default 0600, or 0640 "
                "with SENTINEL_GROUP); a bad value turns the hooks off")
JOB = Var("SENTINEL_JOB", "text", "", "the job this process belongs to (default: from torchrun, SLURM, "
          "MASTER_ADDR:MASTER_PORT, or namespace/pod)")
HOST = Var("SENTINEL_HOST", "text", "", "the host name to report (default: the hostname)")
POD = Var("SENTINEL_POD", "text", "", "the pod name (default: $POD_NAME)")
NAMESPACE = Var("SENTINEL_NAMESPACE", "text", "", "the pod's namespace (default: $POD_NAMESPACE)")
FRAMEWORK = Var("SENTINEL_FRAMEWORK", "text", "python", "the framework to report until an adapter names it")
CACHE = Var("SENTINEL_CACHE", "text", None, "where `make vllm-env` keeps the vLLM environment that `sentinel demo "
            "--vllm` runs (default: ~/.cache/sentinel)")

VARS: tuple[Var, ...] = (DIR, DISABLE, MODE, CHECKS, SAMPLE_EVERY, CONTAIN_PAGE, DRAIN_MS, RING_CAPACITY, EAGER,
                         COLLECTIVES, COLLECTIVE_MARKS, ADAPTERS, COREDUMP, FAULTHANDLER, EXCEPTHOOK, GROUP, DIR_MODE, FILE_MODE, JOB,
                         HOST, POD, NAMESPACE, FRAMEWORK, CACHE)
by_name: dict[str, Var] = {v.name: v for v in VARS}


def read(var: Var, environ: Mapping[str, str] | None = None) -> Any:
    """``var``'s value, the default for a bad one, with no report (the sidecar's own reads, where a
    bad value is reported by the command that uses it)."""
    return var.read(environ).value
