"""`sentinel triage`: explain a fault from a GPU coredump, a saved cuda-gdb transcript, or the
journal (one fault by id, or the list of the last ones)."""

from __future__ import annotations

import argparse
import json
import os

from sentinel.cli.options import CommandError, add_dir, add_json, finite_float
from sentinel.triage.readers import flight_recorder, kernel_log, serving_log, watchdog

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "triage"
HELP = "explain a fault: a GPU coredump, a saved cuda-gdb transcript, or a journaled fault"
USAGE = "sentinel triage [FILE | --cuda-gdb-output FILE | --fault ID | --list [N]] [--json]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel triage`."""
    p.add_argument("core", nargs="?", metavar="FILE",
                   help="a GPU coredump (.nvcudmp, read with cuda-gdb), a saved cuda-gdb transcript, or a PyTorch "
                        "Flight Recorder dump: what it is is detected")
    p.add_argument("--cuda-gdb-output", metavar="FILE", help="a saved cuda-gdb transcript")
    p.add_argument("--fault", type=int, metavar="ID", help="a fault from the journal under --dir")
    p.add_argument("--list", type=int, nargs="?", const=20, metavar="N", help="list the last N journaled faults")
    add_dir(p, "SENTINEL_DIR with the journal")
    p.add_argument("--catalog", action="append", default=[], metavar="FILE", help="extra known-issue catalog")
    p.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to run")
    p.add_argument("--timeout", type=finite_float(0), default=60.0, help="cuda-gdb timeout in seconds")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Run `sentinel triage`; returns 0 for a fault explained, 1 when no CUDA exception was found.
    Raises CommandError (exit 2) for a bad catalog, a missing file or journal, or a file of no known kind."""
    from sentinel.triage import catalog as catalog_mod
    from sentinel.triage import records, report
    from sentinel.triage.readers import cudagdb

    try:
        cat = catalog_mod.load(args.catalog)
    except (catalog_mod.CatalogError, OSError) as exc:
        raise CommandError(str(exc)) from None
    if args.fault is not None:
        rec = records.FaultRecord.from_dict(_journaled(args.dir, args.fault))
    elif args.list:
        return _list(args)
    else:
        if args.core and not args.cuda_gdb_output and not _is_coredump(args.core):
            reader = _detect(args.core)
            if reader is flight_recorder:
                return _flight_recorder(args)
            if reader is kernel_log:
                return _kernel_log(args, cat)
            if reader is watchdog:
                return _watchdog(args)
            if reader is serving_log:
                return _serving_log(args, cat)
            if reader is not cudagdb:
                raise CommandError(f"{args.core}: a {reader.KIND}, which `sentinel triage` cannot report on yet")
            args.cuda_gdb_output, args.core = args.core, None  # a saved transcript
        rec = _from_debugger(args, cat)
    if args.json:
        print(json.dumps(rec.as_dict(), indent=2, default=str))
    else:
        print(report.render_report(rec))
    return 0 if rec.exception_class != "unknown" else 1


def _open(path: str):  # noqa: ANN202
    from sentinel.daemon.journal import Journal, JournalError

    try:
        return Journal(path)
    except JournalError as exc:
        raise CommandError(str(exc)) from None


def _journaled(base_dir: str, fault_id: int) -> dict:
    from sentinel_hooks.layout import journal_path

    path = journal_path(base_dir)
    if not os.path.exists(path):
        raise CommandError(f"no journal at {path}")
    j = _open(path)
    try:
        d = j.fault(fault_id)
    finally:
        j.close()
    if d is None:
        raise CommandError(f"no fault {fault_id} in {path}", 1)
    return d


def _list(args: argparse.Namespace) -> int:
    from sentinel.triage import report
    from sentinel_hooks.layout import journal_path

    path = journal_path(args.dir)
    if not os.path.isdir(args.dir):
        raise CommandError(f"no such directory: {args.dir}")
    if not os.path.exists(path):
        raise CommandError(f"no journal at {path}: no daemon has run with --dir {args.dir}", 1)
    j = _open(path)
    try:
        rows = j.faults(limit=args.list)
    finally:
        j.close()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no faults journaled in {args.dir}")
    else:
        print(report.render_list(rows))
    return 0


def _from_debugger(args: argparse.Namespace, cat):  # noqa: ANN001, ANN202
    """A fault record from a saved cuda-gdb transcript, or from cuda-gdb run on a coredump."""
    from sentinel.triage import records
    from sentinel.triage.readers import cudagdb

    if args.cuda_gdb_output:
        try:
            text = open(args.cuda_gdb_output, errors="replace").read()
        except OSError as exc:
            raise CommandError(str(exc)) from None
        report, core, notes = cudagdb.parse(text), "", []
    elif args.core:
        if not os.path.isfile(args.core):
            raise CommandError(f"no such file: {args.core}")
        exe = cudagdb.find_cuda_gdb(args.cuda_gdb)
        if exe is None:
            raise CommandError("cuda-gdb not found (pass --cuda-gdb PATH); `sentinel doctor` explains")
        try:
            text, _secs = cudagdb.run(args.core, exe, args.timeout)
        except Exception as exc:
            raise CommandError(f"cuda-gdb failed: {exc}", 1) from None
        report, core, notes = cudagdb.parse(text), os.path.abspath(args.core), []
    else:
        raise CommandError("give a CORE file, --cuda-gdb-output FILE, --fault ID or --list")
    if not report.ok:
        notes.append("no CUDA exception or kernel found in the transcript: " + ("; ".join(report.errors) or
                     "is it a cuda-gdb transcript of a GPU coredump?"))
    rec = records.from_core(report, core, None, lambda tag: "", args.dir, cat, notes)
    rec.source = "coredump" if core else "transcript"
    return rec


def _head(path: str) -> bytes:
    from sentinel.triage.readers import HEAD_BYTES

    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except OSError as exc:
        raise CommandError(str(exc)) from None


def _is_coredump(path: str) -> bool:
    """A GPU coredump is an ELF file (cuda-gdb reads it); a missing file goes the coredump way too,
    which says it is missing."""
    return not os.path.isfile(path) or _head(path).startswith(b"\x7fELF")


def _detect(path: str):  # noqa: ANN202
    """The reader of a file that is not a coredump. Raises CommandError when none knows it."""
    from sentinel.triage.readers import READERS, detect

    reader = detect(_head(path))
    if reader is None:
        kinds = ", ".join(r.KIND for r in READERS)
        raise CommandError(f"{path}: not a GPU coredump, nor one of: {kinds}")
    return reader


def _flight_recorder(args: argparse.Namespace) -> int:
    """A Flight Recorder dump: its summary (restricted unpickling; an unsafe dump is refused)."""
    try:
        summary = flight_recorder.read(args.core)
    except Exception as exc:
        raise CommandError(f"{args.core}: Flight Recorder dump refused: {exc}", 1) from None
    print(json.dumps(summary, indent=2) if args.json else _render_fr(args.core, summary))
    return 0


def _kernel_log(args: argparse.Namespace, cat) -> int:  # noqa: ANN001
    """NVRM Xid lines: one line per GPU and XID (repeats counted), with the catalog's meaning and action."""
    from dataclasses import asdict

    with open(args.core, errors="replace") as f:
        events = kernel_log.parse(f.read())
    if not events:
        raise CommandError(f"{args.core}: no NVRM Xid line it could read", 1)
    if args.json:
        print(json.dumps([asdict(e) | {"catalog": asdict(cat.xid(e.xid))} for e in events], indent=2))
        return 0
    groups: dict[tuple[str, int, bool], list] = {}
    for e in events:
        groups.setdefault((e.pci, e.xid, e.nvswitch), []).append(e)
    lines = [f"{args.core}: {len(events)} NVRM Xid event(s) on {len({e.pci for e in events})} GPU(s)"]
    for (pci, xid, nvswitch), evs in groups.items():
        info = cat.xid(xid) if not nvswitch else None
        first, last = evs[0], evs[-1]
        who = sorted({f"{e.process or '?'} (pid {e.pid})" for e in evs if e.pid is not None})
        name = f"SXid {xid} (NVSwitch)" if nvswitch else f"Xid {xid} {info.name} [{info.severity}]"
        lines.append(f"  GPU {pci}{' ' + first.uuid if first.uuid else ''}: {name} x{len(evs)}"
                     + (f", {first.time} .. {last.time}" if first.time else ""))
        if who:
            lines.append(f"    processes  {', '.join(who[:8])}")
        if first.mmu_fault or first.sm_exception:
            lines.append(f"    fault      {first.mmu_fault or first.sm_exception}")
        else:
            lines.append(f"    detail     {first.detail[:200]}")
        if info is not None:
            lines.append(f"    meaning    {info.meaning}")
            lines.append(f"    action     {info.action}")
    print("\n".join(lines))
    return 0


def _serving_log(args: argparse.Namespace, cat) -> int:  # noqa: ANN001
    """A serving log: the fault record of the failure it logged."""
    from sentinel.triage import records, report

    with open(args.core, errors="replace") as f:
        rep = serving_log.parse(f.read())
    if not rep.ok:
        raise CommandError(f"{args.core}: no failure in it (no CUDA error, device assert or TMA failure)", 1)
    rec = records.from_log(rep, args.core, cat)
    print(json.dumps(rec.as_dict(), indent=2, default=str) if args.json else report.render_report(rec))
    return 0


def _watchdog(args: argparse.Namespace) -> int:
    """A c10d watchdog / desync report: the hang it shows, its culprit ranks and who waits where."""
    from dataclasses import asdict

    with open(args.core, errors="replace") as f:
        rep = watchdog.parse(f.read())
    if not rep.ok:
        raise CommandError(f"{args.core}: no watchdog line it could read", 1)
    if args.json:
        print(json.dumps(asdict(rep) | {"culprit_ranks": rep.culprit_ranks()}, indent=2))
        return 0
    lines = []
    for pg in rep.pg_status[:1] or [None]:
        where = f"PG {pg.pg}" + (f" ({pg.pg_name})" if pg and pg.pg_name else "") if pg else "a process group"
        t = rep.timeouts[0] if rep.timeouts else None
        d = rep.desyncs[0] if rep.desyncs else None
        what = f" at {d.op} collective #{d.seq}" if d else (f" at {t.op} work #{t.seq}" if t else "")
        what += f", timeout {t.timeout_ms / 1000:g} s" if t else ""
        lines.append(f"{args.core}: collective hang in {where}{what}")
        if pg:
            lines.append(f"  rank {pg.rank}: last enqueued #{pg.last_enqueued}, last completed #{pg.last_completed}")
    culprits = rep.culprit_ranks()
    for d in rep.desyncs:
        for ranks, text in d.culprits:
            lines.append(f"  culprit   rank {_span(ranks)}: {text}")
        for s in d.states:
            if set(s.ranks) - set(culprits):
                lines.append(f"  waiting   rank {_span(s.ranks)}: {s.state} {s.op} #{s.seq}")
    if rep.timeouts and not rep.desyncs:
        ranks = sorted({t.rank for t in rep.timeouts})
        lines.append(f"  timed out rank {_span(ranks)} (no desync report: set TORCH_NCCL_DESYNC_DEBUG=1 to have "
                     "the culprit named; a rank missing from this list never joined)")
    for w in rep.nccl_warnings[:5]:
        lines.append(f"  NCCL WARN {w}")
    print("\n".join(lines))
    return 0


def _span(ranks) -> str:  # noqa: ANN001
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, run = [], []
    for r in sorted(set(ranks)):
        if run and r == run[-1] + 1:
            run.append(r)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
        run = [r]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(out)


def _render_fr(path: str, summary: dict) -> str:
    lines = [f"{path}: PyTorch Flight Recorder dump (version {summary.get('version') or '?'})"]
    for pg, g in sorted(summary.get("groups", {}).items()):
        lines.append(f"  process group {pg}: last enqueued #{g.get('last_enqueued')}, last completed "
                     f"#{g.get('last_completed')}")
        for e in g.get("last", []):
            lines.append(f"    #{e.get('collective_seq_id')} {e.get('profiling_name')} {e.get('state')}")
    return "\n".join(lines)

