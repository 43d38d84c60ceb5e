"""PyTorch Flight Recorder dumps, read safely.

ProcessGroupNCCL writes them (when the user enables ``TORCH_FR_BUFFER_SIZE``) as pickles, at a
watchdog timeout, to ``TORCH_FR_DUMP_TEMP_FILE<rank>``. A pickle can run any code on load, so this
module never calls ``pickle.load`` on one: a restricted unpickler accepts only plain containers,
strings and numbers, and refuses every global (``os.system`` included) with a clear error.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

MAX_BYTES = 64 << 20


class UnsafeDump(pickle.UnpicklingError):
    """A dump that asked for something outside the allow-list."""


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # every global, class or function
        raise UnsafeDump(f"refused global {module}.{name}: Flight Recorder dumps hold only plain data")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeDump("refused a persistent id")


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
    entries, from a dump's ``entries`` (the analyser's view, for the hang record)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise pickle.UnpicklingError("not a Flight Recorder dump: no 'entries' list")
    groups: dict[str, dict[str, Any]] = {}
    for e in doc["entries"]:
        if not isinstance(e, dict):
            continue
        pg = e.get("process_group")
        key = str(pg[0] if isinstance(pg, list | tuple) and pg else pg if pg is not None else "0")
        g = groups.setdefault(key, {"last_enqueued": 0, "last_completed": 0, "last": []})
        seq = e.get("collective_seq_id")
        if isinstance(seq, int):
            g["last_enqueued"] = max(g["last_enqueued"], seq)
            if e.get("state") == "completed":
                g["last_completed"] = max(g["last_completed"], seq)
        g["last"] = (g["last"] + [{k: e.get(k) for k in ("collective_seq_id", "profiling_name", "state")}])[-3:]
    status = doc.get("pg_status") if isinstance(doc.get("pg_status"), dict) else {}
    return {"version": doc.get("version"), "groups": groups, "pg_status": status}


def read(path: str) -> dict[str, Any]:
    """Read and summarise one dump file. Raises pickle.UnpicklingError (or UnsafeDump) on bad input."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    return summarize(loads(data))


def dump_prefix(base_dir: str) -> str:
    """Where `sentinel run` points TORCH_FR_DUMP_TEMP_FILE (unless the user set it)."""
    return os.path.join(base_dir, "fr", "trace_rank_")
