"""`sentinel status`: what is attached, read straight from the rings (no daemon needed).

Rings give the live truth; the journal adds processes whose ring files are gone and the
daemon's read counters (torn records).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from sentinel_hooks import ringformat as rf

from .discovery import is_ring_name
from .journal import journal_path
from .ringreader import RingReader


def _journal_rows(base_dir: str) -> dict[str, dict[str, Any]]:
    path = journal_path(base_dir)
    if not os.path.exists(path):
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            cur = db.execute("SELECT * FROM processes")
            names = [d[0] for d in cur.description]
            return {r[0]: dict(zip(names, r)) for r in cur}
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def _opt(v: Any) -> Any:
    return None if v is None or v == -1 else v


def collect(base_dir: str) -> list[dict[str, Any]]:
    now = time.time()
    journal = _journal_rows(base_dir)
    out: dict[str, dict[str, Any]] = {}
    rings = rf.rings_dir(base_dir)
    try:
        names = sorted(n for n in os.listdir(rings) if is_ring_name(n))
    except FileNotFoundError:
        names = []
    for name in names:
        try:
            reader = RingReader(os.path.join(rings, name))
        except (rf.RingFormatError, OSError):
            continue
        try:
            h = reader.header
            alive = reader.writer_alive()
            top = reader.top_seq()
        finally:
            reader.close()
        row = journal.get(name, {})
        out[name] = {
            "ring": name,
            "pid": h["pid"],
            "rank": _opt(h["rank"]),
            "local_rank": _opt(h["local_rank"]),
            "world_size": _opt(h["world_size"]),
            "job": h["job"],
            "host": h["host"],
            "pod": h["pod"],
            "framework": h["framework"],
            "alive": alive,
            "exit": "running" if alive else ("exited" if h["exit_ns"] else "died"),
            "step": h["step"],
            "heartbeat_age_s": round(now - h["last_step_ns"] / 1e9, 3) if h["last_step_ns"] else None,
            "records": top,
            "overwritten": max(0, top - reader.capacity),
            "dropped": h["dropped"],
            "torn": row.get("torn", 0),
        }
    for name, row in journal.items():
        if name in out:
            continue
        ident = json.loads(row["identity"])
        out[name] = {
            "ring": name,
            "pid": ident.get("pid"),
            "rank": _opt(ident.get("rank")),
            "local_rank": _opt(ident.get("local_rank")),
            "world_size": _opt(ident.get("world_size")),
            "job": ident.get("job", ""),
            "host": ident.get("host", ""),
            "pod": ident.get("pod", ""),
            "framework": ident.get("framework", ""),
            "alive": False,
            "exit": row["exit"] if row["exit"] != "running" else "unknown",
            "step": row["step"],
            "heartbeat_age_s": round(now - row["last_step_ns"] / 1e9, 3) if row["last_step_ns"] else None,
            "records": row["last_seq"],
            "overwritten": row["overwritten"],
            "dropped": row["dropped"],
            "torn": row["torn"],
        }
    return sorted(out.values(), key=lambda r: (not r["alive"], r["job"], r["rank"] if r["rank"] is not None else 1 << 30, r["pid"] or 0))


def render_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no hooked processes found"
    cols = [
        ("RANK", lambda r: "-" if r["rank"] is None else str(r["rank"])),
        ("PID", lambda r: str(r["pid"])),
        ("ALIVE", lambda r: "yes" if r["alive"] else f"no ({r['exit']})"),
        ("STEP", lambda r: str(r["step"])),
        ("HEARTBEAT", lambda r: "-" if r["heartbeat_age_s"] is None else _age(r["heartbeat_age_s"])),
        ("RECORDS", lambda r: str(r["records"])),
        ("DROPS", lambda r: str(r["overwritten"] + r["dropped"] + r["torn"])),
        ("JOB", lambda r: r["job"] or "-"),
        ("HOST", lambda r: r["host"] or "-"),
    ]
    table = [[h for h, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _age(s: float) -> str:
    if s < 120:
        return f"{s:.1f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"
