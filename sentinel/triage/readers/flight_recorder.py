"""PyTorch Flight Recorder dumps, read safely.

ProcessGroupNCCL writes them (when the user enables ``TORCH_FR_BUFFER_SIZE``) as pickles, at a
watchdog timeout, to ``TORCH_FR_DUMP_TEMP_FILE<rank>``. A pickle can run any code on load, so this
module never calls ``pickle.load`` on one: a restricted unpickler accepts only plain containers,
strings and numbers, and refuses every global (``os.system`` included) with a clear error.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from sentinel.triage import desync

__all__ = [
    "KIND", "MAX_BYTES", "MAX_TUPLE_DEPTH", "MAX_TEXT", "MAX_GROUPS", "UnsafeDump", "cross_rank", "looks_like", "loads",
    "summarize", "read",
]

MAX_BYTES = 64 << 20
MAX_TUPLE_DEPTH = 100  # dumps nest tuples one or two deep
MAX_TEXT = 256  # characters of a dump's string kept in the summary
MAX_GROUPS = 4096
KIND = "Flight Recorder dump"


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like a pickle of protocol 2 to 5, the form
    ProcessGroupNCCL dumps in. Whether it is a safe Flight Recorder dump, ``loads`` decides."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


class UnsafeDump(pickle.UnpicklingError):
    """A dump that asked for something outside the allow-list."""


def _then_check_tuple(load: Any) -> Any:
    def run(self: _Restricted) -> None:
        load(self)
        self._check_tuple()

    return run


class _Restricted(pickle._Unpickler):
    """The pure-Python unpickler (``pickle._Unpickler``), so that single opcodes can be refused.

    The C one cannot be: it takes extension codes (EXT1/2/4) from copyreg's process-wide cache
    without asking find_class, so a global some other code once unpickled would come back; and
    hashing a tuple nested a million deep (a 1 MB dump) overflows the C stack: a segfault."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self._depths: dict[int, tuple[tuple, int]] = {}  # id -> (the tuple, kept alive; its depth)

    def find_class(self, module: str, name: str) -> Any:  # every global, class or function
        raise UnsafeDump(f"refused global {module}.{name}: Flight Recorder dumps hold only plain data")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeDump("refused a persistent id")

    def _refuse_extension(self) -> None:
        raise UnsafeDump("refused an extension code (a global from copyreg's registry)")

    def _check_tuple(self) -> None:
        t = self.stack[-1]
        depth = 1 + max((self._depths[id(x)][1] for x in t if type(x) is tuple and id(x) in self._depths), default=0)
        if depth > MAX_TUPLE_DEPTH:
            raise pickle.UnpicklingError(f"tuples nested deeper than {MAX_TUPLE_DEPTH}")
        self._depths[id(t)] = (t, depth)

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
        dispatch[_op[0]] = _then_check_tuple(dispatch[_op[0]])
    del _op


def loads(data: bytes) -> Any:
    """Unpickle plain data only (dict, list, tuple, set, str, bytes, int, float, bool, None)."""
    if len(data) > MAX_BYTES:
        raise UnsafeDump(f"dump is {len(data)} bytes, over the {MAX_BYTES} byte limit")
    try:
        return _Restricted(io.BytesIO(data)).load()
    except UnsafeDump:
        raise
    except Exception as exc:  # truncated, not a pickle, recursion: all just bad input
        raise pickle.UnpicklingError(f"not a readable Flight Recorder dump: {type(exc).__name__}: {exc}") from None


def summarize(doc: Any) -> dict[str, Any]:
    """Per process group: the last enqueued and completed collective sequence ids, and the last
    entries, from a dump's ``entries`` (the analyser's view, for the hang record).

    Only plain, bounded values are kept: the summary goes into logs and the journal, and a dump
    may hold a structure whose text is exponential (shared references) or deeper than repr allows."""
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise pickle.UnpicklingError("not a Flight Recorder dump: no 'entries' list")
    groups: dict[str, dict[str, Any]] = {}
    for e in doc["entries"]:
        if not isinstance(e, dict):
            continue
        pg = e.get("process_group")
        name = _scalar(pg[0] if isinstance(pg, list | tuple) and pg else pg if pg is not None else "0")
        if name is None:
            continue  # not a process group name: skipped like a non-dict entry
        g = groups.get(str(name))
        if g is None:
            if len(groups) >= MAX_GROUPS:
                raise pickle.UnpicklingError(f"not a Flight Recorder dump: more than {MAX_GROUPS} process groups")
            g = groups[str(name)] = {"last_enqueued": 0, "last_completed": 0, "last": []}
        seq = _scalar(e.get("collective_seq_id"))
        if isinstance(seq, int) and not isinstance(seq, bool):
            g["last_enqueued"] = max(g["last_enqueued"], seq)
            if e.get("state") == "completed":
                g["last_completed"] = max(g["last_completed"], seq)
        g["last"] = (g["last"] + [{k: _scalar(e.get(k)) for k in ("collective_seq_id", "profiling_name", "state")}])[-3:]
    status: dict[str, Any] = {}
    if isinstance(doc.get("pg_status"), dict):
        for k, v in list(doc["pg_status"].items())[:MAX_GROUPS]:
            if _scalar(k) is not None and isinstance(v, dict):
                status[str(_scalar(k))] = {str(_scalar(k2)): _scalar(v2) for k2, v2 in list(v.items())[:64]
                                           if _scalar(k2) is not None}
    return {"version": _scalar(doc.get("version")), "groups": groups, "pg_status": status}


def _scalar(v: Any) -> str | int | float | bool | None:
    """``v`` if it is a plain scalar (a string cut to MAX_TEXT, an int within 64 bits), else None."""
    if isinstance(v, str):
        return v[:MAX_TEXT]
    if isinstance(v, int):
        return v if -(1 << 63) <= v < 1 << 63 else None
    return v if isinstance(v, float) else None


def read(path: str) -> dict[str, Any]:
    """Read and summarise one dump file. Raises pickle.UnpicklingError (or UnsafeDump) on bad input."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    return summarize(loads(data))


# -- across ranks -----------------------------------------------------------------------------------

def _text(v: Any) -> str:
    """A bounded text of a plain value (sizes are lists of lists of ints)."""
    if isinstance(v, str):
        return v[:MAX_TEXT]
    return repr(v)[:MAX_TEXT] if isinstance(v, list | tuple | int | float) or v is None else "?"


def cross_rank(docs: dict[int, Any]) -> list[dict[str, Any]]:
    """What PyTorch's Flight Recorder analyser finds across ranks, from each rank's loaded dump
    (``{rank: doc}``, docs from ``loads``): per process group and collective sequence number, the
    ranks that never enqueued it, and the ranks whose op, input sizes or dtypes differ from the
    majority's. Returns one finding per collective that is not the same on every rank:
    ``{"pg", "seq", "op", "expected": {...}, "culprits": [{"rank", "error", "found"}], "missing": [ranks]}``,
    in order. Raises pickle.UnpicklingError for a doc that is not a dump."""
    seen: dict[tuple[str, int], dict[int, dict[str, str]]] = {}
    last: dict[str, dict[int, int]] = {}
    for rank, doc in docs.items():
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
            raise pickle.UnpicklingError(f"rank {rank}: not a Flight Recorder dump: no 'entries' list")
        for e in doc["entries"]:
            if not isinstance(e, dict) or e.get("is_p2p"):
                continue
            pg = e.get("process_group")
            name = str(_scalar(pg[1] if isinstance(pg, list | tuple) and len(pg) > 1 else pg) or "0")
            seq = _scalar(e.get("collective_seq_id"))
            if not isinstance(seq, int) or isinstance(seq, bool):
                continue
            seen.setdefault((name, seq), {})[rank] = {
                "op": _text(e.get("profiling_name")), "size": _text(e.get("input_sizes")),
                "dtype": _text(e.get("input_dtypes"))}
            last.setdefault(name, {})[rank] = max(last.get(name, {}).get(rank, 0), seq)
    findings = []
    for (pg, seq), by_rank in sorted(seen.items()):
        ranks_here = last.get(pg, {})
        missing = sorted(r for r in ranks_here if r not in by_rank and ranks_here[r] < seq)
        culprits = desync.odd_ones(by_rank)
        if culprits or missing:
            first = by_rank[min(by_rank)]
            findings.append({"pg": pg, "seq": seq, "op": first["op"], "culprits": culprits, "missing": missing})
    return findings
