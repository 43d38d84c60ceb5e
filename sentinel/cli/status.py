"""`sentinel status`: what is attached, read straight from the rings (no daemon needed); and the
ring lookup and record format `sentinel tail` shares.

Rings give the live truth; the journal adds processes whose ring files are gone and the
daemon's read counters (torn records).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import time
from typing import Any

from sentinel.cli.options import CommandError, add_dir, add_json
from sentinel.daemon.discovery import is_ring_name
from sentinel.daemon.ringreader import RingReader
from sentinel.daemon.snapshot import identity_columns
from sentinel_hooks import layout
from sentinel_hooks import ringformat as rf
from sentinel_hooks.layout import journal_path

__all__ = [
    "open_hangs", "render_hangs", "collect", "render_table", "find_rings", "format_record", "NAME", "HELP",
    "add_arguments", "run",
]


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


def open_hangs(base_dir: str, include_resolved: bool = False) -> list[dict[str, Any]]:
    """Hangs from the journal (open ones first), with their culprits, waiting ranks and evidence."""
    path = journal_path(base_dir)
    if not os.path.exists(path):
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            where = "" if include_resolved else "WHERE resolved_at IS NULL"
            cur = db.execute(f"SELECT * FROM hangs {where} ORDER BY id DESC LIMIT 50")
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur]
        finally:
            db.close()
    except sqlite3.Error:
        return []
    for r in rows:
        for key in ("culprits", "waiting", "evidence", "victims"):
            if r.get(key):
                r[key] = json.loads(r[key])
    return rows


def render_hangs(hangs: list[dict[str, Any]], full: bool = False) -> str:
    """Hangs (``open_hangs``'s rows) as text: a ``!! HANG`` line each with its culprits and waiting
    ranks, then a line per culprit; ``full`` adds the evidence's py-spy stacks and GPU utilisation.
    "" for no hangs."""
    now = time.time()
    lines = []
    # One incident per root hang: the hangs that follow from it (another group's ranks waiting on it)
    # are listed under it, not as hangs of their own.
    shown = {(hg["job"], f"{hg['grp']} #{hg['seq']}") for hg in hangs}
    roots = [hg for hg in hangs if not hg.get("caused_by") or (hg["job"], hg["caused_by"]) not in shown]
    for hg in roots:
        root_culprits = [c for c in hg["culprits"] if c["reason"] != "waiting"]
        who = ", ".join(f"rank {c['rank']} ({c['reason']})" for c in root_culprits) or "no rank missing"
        state = "resolved" if hg.get("resolved_at") else f"stalled {_age(now - hg['since']).replace(' ago', '')}"
        victims = hg.get("victims") or hg["waiting"]
        lines.append(f"!! HANG  job {hg['job'] or '-'} pg {hg['grp']} at collective #{hg['seq']} ({hg.get('op') or '?'}): "
                     f"culprit {who}; "
                     f"victims {', '.join(map(str, victims)) or '-'}; {state}")
        for c in root_culprits:
            lines.append(f"         rank {c['rank']}: {c['detail']}")
        for other in hangs:
            if other.get("caused_by") == f"{hg['grp']} #{hg['seq']}" and other["job"] == hg["job"]:
                lines.append(f"         and pg {other['grp']} stuck at #{other['seq']} ({other.get('op') or '?'}) "
                             f"because of it, waiting there: rank {', '.join(map(str, other['waiting'])) or '-'}")
        ev = hg.get("evidence") or {}
        if full:
            for who_, stack in (ev.get("stacks") or {}).items():
                lines.append(f"   stack of {who_}:")
                lines.extend("     " + ln for ln in str(stack).splitlines())
            for g in ev.get("gpus") or []:
                lines.append(f"   gpu {g['gpu']}: {100 * g['utilization']:.0f}% busy, ranks {g['ranks']}")
        elif ev.get("stacks"):
            lines.append(f"         stacks of {len(ev['stacks'])} ranks: sentinel status --hangs")
    return "\n".join(lines)


def collect(base_dir: str) -> list[dict[str, Any]]:
    """One dict per hooked process of ``base_dir``, live ones first: read from each ring (rings that
    cannot be read are skipped), then the journal's processes whose ring is gone. ``heartbeat_age_s``
    is in seconds (None before a step); ``records``, ``overwritten``, ``dropped`` and ``torn`` count
    records."""
    now = time.time()
    journal = _journal_rows(base_dir)
    out: dict[str, dict[str, Any]] = {}
    rings = layout.rings_dir(base_dir)
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
            probes = _probe_summary(reader.tail(writer_alive=alive).records)
        finally:
            reader.close()
        row = journal.get(name, {})
        saved = json.loads(row.get("extra") or "{}").get("violations") or {}
        # The journal counts every violation the daemon read; the ring holds only its last records.
        violations = {k: max(v, saved.get(k, 0)) for k, v in probes["violations"].items()} | {
            k: v for k, v in saved.items() if k not in probes["violations"] and v}
        out[name] = {
            "ring": name,
            **identity_columns(h),
            "alive": alive,
            "exit": "running" if alive else ("exited" if h["exit_ns"] else "died"),
            "mode": rf.PROBE_MODES[h["mode"]] if 0 <= h.get("mode", 0) < len(rf.PROBE_MODES) else "",
            "violations": violations,
            "page_table_headroom": probes["headroom"],
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
            **identity_columns(ident),
            "alive": False,
            "exit": row["exit"] if row["exit"] != "running" else "unknown",
            "mode": "",
            "violations": {k: v for k, v in (json.loads(row.get("extra") or "{}").get("violations") or {}).items() if v},
            "page_table_headroom": None,
            "step": row["step"],
            "heartbeat_age_s": round(now - row["last_step_ns"] / 1e9, 3) if row["last_step_ns"] else None,
            "records": row["last_seq"],
            "overwritten": row["overwritten"],
            "dropped": row["dropped"],
            "torn": row["torn"],
        }
    return sorted(out.values(), key=lambda r: (not r["alive"], r["job"], r["rank"] if r["rank"] is not None else 1 << 30, r["pid"] or 0))


def _probe_summary(recs: Any) -> dict[str, Any]:
    """Violations by check (summed over the records given) and the tightest page-table headroom
    (each probe site's latest paged-KV context: num_pages - 1 - the highest index read)."""
    violations: dict[str, int] = {}
    sites: dict[int, int] = {}
    for r in recs[(recs["kind"] == rf.Kind.PROBE) | (recs["kind"] == rf.Kind.CONTEXT)].tolist():
        _seq, _ts, _step, kind, code, tag, _aux, a, b, _c, _end = r
        if kind == rf.Kind.PROBE:
            label = rf.CHECK_LABELS.get(code, str(code))
            violations[label] = violations.get(label, 0) + max(0, a)
        elif code == rf.Context.PAGED_KV and a >= 0:
            sites[tag] = b - 1 - a
    return {"violations": violations, "headroom": min(sites.values()) if sites else None}


def render_table(rows: list[dict[str, Any]]) -> str:
    """``collect``'s rows as an aligned text table (DROPS = overwritten + dropped + torn), or a line
    saying there are none."""
    if not rows:
        return "no hooked processes found"
    cols = [
        ("RANK", lambda r: "-" if r["rank"] is None else str(r["rank"])),
        ("PID", lambda r: str(r["pid"])),
        ("ALIVE", lambda r: "yes" if r["alive"] else f"no ({r['exit']})"),
        ("STEP", lambda r: str(r["step"])),
        ("HEARTBEAT", lambda r: "-" if r["heartbeat_age_s"] is None else _age(r["heartbeat_age_s"])),
        ("MODE", lambda r: r.get("mode") or "-"),
        ("HEADROOM", lambda r: "-" if r.get("page_table_headroom") is None else str(r["page_table_headroom"])),
        ("VIOLATIONS", lambda r: ", ".join(f"{k} {v}" for k, v in sorted((r.get("violations") or {}).items())) or "-"),
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


def find_rings(base_dir: str, pid: int | None = None, rank: int | None = None) -> list[str]:
    """Ring paths under ``base_dir`` of the process ``pid`` (or of every process of ``rank``), newest
    first. Raises FileNotFoundError if there is no rings folder."""
    rings = layout.rings_dir(base_dir)
    out = []
    for name in os.listdir(rings):
        if not is_ring_name(name):
            continue
        path = os.path.join(rings, name)
        try:
            reader = RingReader(path)
        except (rf.RingFormatError, OSError):
            continue
        try:
            h = reader.header
        finally:
            reader.close()
        if (pid is None or h["pid"] == pid) and (rank is None or h["rank"] == rank):
            out.append((h["created_ns"], path))
    return [p for _t, p in sorted(out, reverse=True)]


def format_record(r: dict[str, Any]) -> str:
    """One line for a record rendered by ``faults.render_records``."""
    when = time.strftime("%H:%M:%S", time.gmtime(r["time"])) + f".{int(r['time'] * 1000) % 1000:03d}Z"
    detail = {k: v for k, v in r.items() if k not in ("seq", "time", "kind", "step")}
    return f"{when}  seq {r['seq']:>8}  step {r['step']:>7}  {r['kind']:<20} {json.dumps(detail)}"


# -- the subcommand -------------------------------------------------------------------------------

NAME = "status"
HELP = "list hooked processes: rank, pid, alive, step, heartbeat, records, drops"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel status`."""
    add_dir(p)
    add_json(p, "print a JSON list instead of a table")
    p.add_argument("--hangs", action="store_true", help="show recorded collective hangs with their stacks")


def run(args: argparse.Namespace) -> int:
    """Run `sentinel status`; returns 0. Raises CommandError (exit 2) when --dir is not a directory."""
    if not os.path.isdir(args.dir):
        raise CommandError(f"no such directory: {args.dir}")
    if args.hangs:
        hangs = open_hangs(args.dir, include_resolved=True)
        print(json.dumps(hangs, indent=2) if args.json else (render_hangs(hangs, full=True) or "no hangs recorded"))
        return 0
    rows = collect(args.dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        banner = render_hangs(open_hangs(args.dir))
        if banner:
            print(banner + "\n")
        print(render_table(rows))
    return 0
