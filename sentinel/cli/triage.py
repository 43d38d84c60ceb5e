"""`sentinel triage`: explain a fault from a GPU coredump, a saved cuda-gdb transcript, or the
journal (one fault by id, or the list of the last ones)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, NamedTuple

from sentinel.cli.options import CommandError, add_dir, add_json, finite_float
from sentinel.triage.readers import compute_sanitizer, flight_recorder, fr_analysis, kernel_log, serving_log, watchdog

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "triage"
HELP = ("explain a fault from its evidence files (coredumps, cuda-gdb output, logs, dmesg, watchdog reports, "
        "compute-sanitizer reports) or the journal")
USAGE = "sentinel triage [FILE... | --cuda-gdb-output FILE | --fault ID | --list [N]] [--json]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel triage`."""
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="evidence files, '-' for standard input: GPU coredumps (read with cuda-gdb), saved cuda-gdb "
                        "transcripts, Flight Recorder dumps, kernel logs with NVIDIA Xid lines, c10d watchdog reports, "
                        "compute-sanitizer reports, serving logs; what each is is detected")
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
    from sentinel.triage import records

    try:
        cat = catalog_mod.load(args.catalog)
    except (catalog_mod.CatalogError, OSError) as exc:
        raise CommandError(str(exc)) from None
    if args.fault is not None:
        rec = records.FaultRecord.from_dict(_journaled(args.dir, args.fault))
        return _show(args, _of_record(rec))
    if args.list:
        return _list(args)
    if args.cuda_gdb_output or not args.files:
        return _show(args, _of_record(_from_debugger(args, None, cat)))
    args.files = _expand_dirs(args.files)
    with _stdin_as_file(args.files) as files:
        results: list[tuple[str, Result | None, str]] = []  # (name as given, result, or the error's line)
        for name, path in zip(args.files, files):
            try:
                found = _one(args, path, cat)
                results += [(name if len(found) == 1 else f"{name} ({kind})", r, "") for kind, r in found]
            except CommandError as exc:
                message = str(exc).replace(path, name)  # standard input is "-", not our temporary file
                if len(files) == 1:
                    raise CommandError(message, exc.code) from None
                results.append((name, Result(exc.code, "", None), message))
        across = _across_ranks(args.files, files, cat)
    if across is not None:
        results.append(("across ranks (Flight Recorder dumps)", across, ""))
    joined = _incident(args.files, results, cat)
    if joined is not None:
        results.append(("the incident (all files together)", joined, ""))
    if len(results) == 1:
        return _show(args, results[0][1])
    if args.json:
        print(json.dumps([{"file": name, "error": err} if err else {"file": name, "result": r.doc}
                          for name, r, err in results], indent=2, default=str))
    else:
        print("\n\n".join(f"== {name}\n" + (f"sentinel triage: {err}" if err else r.text) for name, r, err in results))
    return max(r.code for _, r, _ in results)


def _incident(names: list[str], results: list[tuple[str, Result | None, str]], cat) -> Result | None:  # noqa: ANN001
    """Two or more files that showed something join into one incident (``triage.incident``)."""
    from sentinel.triage import incident, records, report

    shown = [(name, r) for name, r, err in results if r is not None and not err and r.item is not None]
    if len(shown) < 2:
        return None
    recs = [r.item for _, r in shown if isinstance(r.item, records.FaultRecord)]
    hangs = [r.item for _, r in shown if isinstance(r.item, incident.Hang)]
    # A folder of Flight Recorder dumps is read across ranks: its per-dump summaries add nothing here.
    xids = [x for _, r in shown if isinstance(r.item, list) for x in r.item]
    inc = incident.join([n for n, _ in shown], recs, hangs, xids, cat)
    return Result(0, report.render_incident(inc), {"incident": inc.as_dict()}, None)


def _expand_dirs(names: list[str]) -> list[str]:
    """A directory stands for the files in it (a folder of per-rank Flight Recorder dumps), sorted."""
    out = []
    for name in names:
        if name != "-" and os.path.isdir(name):
            out += sorted(os.path.join(name, f) for f in os.listdir(name) if os.path.isfile(os.path.join(name, f)))
        else:
            out.append(name)
    return out


def _across_ranks(names: list[str], paths: list[str], cat) -> Result | None:  # noqa: ANN001
    """The analyser's cross-rank view when two or more of the files are Flight Recorder dumps whose
    names end in their rank (trace_rank_0, trace_rank_22): which ranks never joined a collective,
    which joined it with another op, size or dtype."""
    import re

    dumps = {}
    for name, path in zip(names, paths):
        m = re.search(r"(\d+)$", os.path.basename(name))
        if m and os.path.isfile(path) and flight_recorder.looks_like(_head(path)[:2]):
            try:
                dumps[int(m[1])] = flight_recorder.loads(open(path, "rb").read(flight_recorder.MAX_BYTES + 1))
            except Exception:  # refused (unsafe or malformed): its own report says so
                continue
    if len(dumps) < 2:
        return None
    try:
        findings = flight_recorder.cross_rank(dumps)
    except Exception as exc:
        return Result(1, f"not comparable: {exc}", {"error": str(exc)})
    known = _fr_known(cat, [(f["op"], [c["error"] for c in f["culprits"]], bool(f["missing"])) for f in findings])
    lines = [f"{len(dumps)} ranks ({', '.join(map(str, sorted(dumps)))}): "
             + (f"{len(findings)} collective(s) not the same on every rank" if findings else "every collective matches")]
    for f in findings[:20]:
        lines.append(f"  {f['op']} #{f['seq']} in {f['pg']}:")
        for c in f["culprits"]:
            lines.append(f"    culprit rank {c['rank']}: {c['error']}, {c['found']} where {c['expected']} was expected")
        if f["missing"]:
            lines.append(f"    never joined: rank {_span(f['missing'])}")
    if findings:
        from sentinel.triage.report import render_known

        lines += render_known(known)
    from sentinel.triage.incident import Hang

    hang = None
    if findings:
        f0 = findings[0]
        culprits = list(dict.fromkeys([c["rank"] for f in findings for c in f["culprits"]] + [r for f in findings
                                                                                               for r in f["missing"]]))
        hang = Hang("Flight Recorder dumps", pg=f0["pg"], op=f0["op"], seq=f0["seq"], culprits=culprits,
                    waiting=sorted(set(dumps) - set(culprits)),
                    detail=[f"rank {c['rank']}: {c['error']}, {c['found']} where {c['expected']} was expected"
                            for c in f0["culprits"][:3]])
    return Result(0, "\n".join(lines), {"findings": findings, "known_issue": known}, hang)


_FR_ERRORS = {"SIZE_OR_SYNTAX_MISMATCH": "size_mismatch", "COLLECTIVE_TYPE_MISMATCH": "op_mismatch",
              "DTYPE_MISMATCH": "dtype_mismatch", "COLLECTIVE_STATE_MISMATCH": "state_mismatch"}


def _fr_known(cat, found: list[tuple[str, list[str], bool]]) -> dict | None:  # noqa: ANN001
    """The catalog's match for Flight Recorder findings: (op, the culprits' error types, whether a rank
    never joined) per collective in error. Evidence: ``collective_hang`` and the mismatch kinds."""
    if not found:
        return None
    ev = {"collective_hang"} | {_FR_ERRORS.get(e, e.lower()) for _, errs, _ in found for e in errs}
    if any(missing for *_, missing in found):
        ev.add("never_joined")
    text = "\n".join(f"{op} {' '.join(errs)}" for op, errs, _ in found[:32])
    match = cat.match("collective_hang", "", ev, text)
    return match.as_dict() if match else None


class Result(NamedTuple):
    """What triage made of one file: the exit status it earns, the text for people, the JSON document,
    and what joins an incident (a FaultRecord, an incident.Hang, or a list of kernel_log.XidEvent)."""

    code: int
    text: str
    doc: Any
    item: Any = None


def _show(args: argparse.Namespace, result: Result) -> int:
    print(json.dumps(result.doc, indent=2, default=str) if args.json else result.text)
    return result.code


def _of_record(rec: Any) -> Result:
    from sentinel.triage import report

    return Result(0 if rec.exception_class != "unknown" else 1, report.render_report(rec), rec.as_dict(), rec)


@contextlib.contextmanager
def _stdin_as_file(files: list[str]) -> Iterator[list[str]]:
    """The file list, with '-' (standard input, read once) saved to a temporary file of its own."""
    if "-" not in files:
        yield files
        return
    with tempfile.TemporaryDirectory(prefix="sentinel-triage-") as tmp:
        path = os.path.join(tmp, "stdin")
        with open(path, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f)
        yield [path if name == "-" else name for name in files]


# A server's own log can hold several of these at once (a worker's CUDA error, the watchdog's timeout
# on the other ranks, the NCCL WARN lines): each of them that the file shows is read.
LOG_KINDS = (serving_log, watchdog, kernel_log)


def _one(args: argparse.Namespace, path: str, cat) -> list[tuple[str, Result]]:  # noqa: ANN001
    """One file's results, (kind, result) each: a coredump goes to cuda-gdb, anything else to the reader
    whose kind it looks like; a log to every log reader whose kind it shows."""
    from sentinel.triage.readers import cudagdb

    if _is_coredump(path):
        return [("coredump", _of_record(_from_debugger(args, path, cat)))]
    reader = _detect(path)
    if reader is cudagdb:
        return [(reader.KIND, _of_record(_from_debugger(args, None, cat, transcript=path)))]
    handlers = {flight_recorder: _flight_recorder, fr_analysis: _fr_analysis, kernel_log: _kernel_log,
                watchdog: _watchdog, compute_sanitizer: _sanitizer, serving_log: _serving_log}
    if reader not in handlers:
        raise CommandError(f"{path}: a {reader.KIND}, which `sentinel triage` cannot report on yet")
    if reader not in LOG_KINDS:
        return [(reader.KIND, handlers[reader](path, cat))]
    head, tail = _head(path), _tail(path)
    kinds = [k for k in LOG_KINDS if k is reader or k.looks_like(head) or k.looks_like(tail)]
    out, refused = [], None
    for kind in kinds:
        try:
            out.append((kind.KIND, handlers[kind](path, cat)))
        except CommandError as exc:  # its marker was there, but nothing it could read
            refused = refused or exc
    if not out:
        raise refused or CommandError(f"{path}: nothing it could read", 1)
    return out


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


def _from_debugger(args: argparse.Namespace, core: str | None, cat, transcript: str | None = None):  # noqa: ANN001, ANN202
    """A fault record from a saved cuda-gdb transcript (``transcript``, else --cuda-gdb-output), or
    from cuda-gdb run on the coredump ``core``."""
    from sentinel.triage import records
    from sentinel.triage.readers import cudagdb

    transcript = transcript or args.cuda_gdb_output
    if transcript:
        try:
            with open(transcript, errors="replace") as f:
                text = f.read()
        except OSError as exc:
            raise CommandError(str(exc)) from None
        report, core, notes = cudagdb.parse(text), "", []
    elif core:
        if not os.path.isfile(core):
            raise CommandError(f"no such file: {core}")
        exe = cudagdb.find_cuda_gdb(args.cuda_gdb)
        if exe is None:
            raise CommandError("cuda-gdb not found (pass --cuda-gdb PATH); `sentinel doctor` explains")
        try:
            text, _secs = cudagdb.run(core, exe, args.timeout)
        except Exception as exc:
            raise CommandError(f"cuda-gdb failed: {exc}", 1) from None
        report, core, notes = cudagdb.parse(text), os.path.abspath(core), []
    else:
        raise CommandError("give a FILE, --cuda-gdb-output FILE, --fault ID or --list")
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


STREAM_BYTES = 64 << 20  # a longer file is streamed: only its lines holding a reader's keys are read


_SCANNED: dict[tuple, list[str]] = {}  # a long file's key lines, scanned once for every log reader


def _lines(f, keys: tuple[bytes, ...]):  # noqa: ANN001, ANN202
    """A binary file's text for a reader: all of it when short; when long, its lines holding ``keys``
    (``readers.scan``; every log reader's keys are looked for in one parallel pass, whose lines each
    reader then takes its own from): a log of gigabytes in seconds and bounded memory."""
    from sentinel.triage.readers.scan import relevant_lines_of

    st = os.fstat(f.fileno())
    if st.st_size <= STREAM_BYTES:
        return f.read().decode("utf-8", "replace")
    key = (f.name, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SCANNED:
        union = tuple(dict.fromkeys(k for kind in LOG_KINDS for k in kind.KEYS))
        _SCANNED.clear()
        _SCANNED[key] = relevant_lines_of(f.name, union)
    texts = tuple(k.decode() for k in keys)
    return [ln for ln in _SCANNED[key] if any(k in ln for k in texts)]


def _tail(path: str, size: int = 1 << 20) -> bytes:
    """The last ``size`` bytes of a file: a long log's failure is at its end (the server died of it)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read(size)
    except OSError as exc:
        raise CommandError(str(exc)) from None


def _detect(path: str):  # noqa: ANN202
    """The reader of a file that is not a coredump, from its first bytes or, for a long log, its last
    megabyte. Raises CommandError when none knows it."""
    from sentinel.triage.readers import HEAD_BYTES, READERS, detect

    head = _head(path)
    reader = detect(head)
    if reader is None and len(head) >= HEAD_BYTES:
        reader = detect(_tail(path))
    if reader is None:
        kinds = ", ".join(r.KIND for r in READERS)
        raise CommandError(f"{path}: not a GPU coredump, nor one of: {kinds}")
    return reader


def _flight_recorder(path: str, cat) -> Result:  # noqa: ANN001
    """A Flight Recorder dump: its summary (restricted unpickling; an unsafe dump is refused)."""
    try:
        summary = flight_recorder.read(path)
    except Exception as exc:
        raise CommandError(f"{path}: Flight Recorder dump refused: {exc}", 1) from None
    return Result(0, _render_fr(path, summary), summary)


def _fr_analysis(path: str, cat) -> Result:  # noqa: ANN001
    """The Flight Recorder analyser's output: each collective in error, with its culprit ranks."""
    from dataclasses import asdict

    with open(path, errors="replace") as f:
        errors = fr_analysis.parse(f.read())
    if not errors:
        raise CommandError(f"{path}: no error block it could read", 1)
    lines = []
    for e in errors:
        ranks = [c[0] for c in e.culprits]
        lines.append(f"{path}: {e.op or 'a collective'} #{e.seq} in {e.group or '?'} mismatched"
                     + (f": culprit rank {_span(ranks)}" if ranks else "")
                     + (f" (world size {e.world_size}, {e.state})" if e.world_size else ""))
        for rank, kind, detail in e.culprits:
            lines.append(f"  culprit   rank {rank}: {kind}" + (f", {detail}" if detail else ""))
    from sentinel.triage.incident import Hang
    from sentinel.triage.report import render_known

    known = _fr_known(cat, [(e.op, [c[1] for c in e.culprits], False) for e in errors])
    lines += render_known(known)
    e0 = errors[0]
    hang = Hang(path, pg=e0.group or "", op=e0.op or "", seq=e0.seq, culprits=[c[0] for e in errors for c in e.culprits],
                detail=[f"{c[1]} {c[2]}".strip() for c in e0.culprits[:3]])
    return Result(0, "\n".join(lines), {"errors": [asdict(e) for e in errors], "known_issue": known}, hang)


def _kernel_log(path: str, cat) -> Result:  # noqa: ANN001
    """NVRM Xid lines: one line per GPU and XID (repeats counted), with the catalog's meaning and action."""
    from dataclasses import asdict

    with open(path, "rb") as f:
        events = kernel_log.parse(_lines(f, kernel_log.KEYS))
    if not events:
        raise CommandError(f"{path}: no NVRM Xid line it could read", 1)
    from sentinel.triage.report import render_known

    def known(e: kernel_log.XidEvent) -> dict | None:
        match = cat.match("", "", {f"xid_{e.xid}"}, f"Xid {e.xid}: {e.detail}")
        return match.as_dict() if match else None

    doc = [asdict(e) | {"catalog": asdict(cat.xid(e.xid)), "known_issue": known(e)} for e in events]
    groups: dict[tuple[str, int, bool], list] = {}
    for e in events:
        groups.setdefault((e.pci, e.xid, e.nvswitch), []).append(e)
    lines = [f"{path}: {len(events)} NVRM Xid event(s) on {len({e.pci for e in events})} GPU(s)"]
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
        if (ki := known(first)) is not None:
            lines += ["  " + ln for ln in render_known(ki)]
    return Result(0, "\n".join(lines), doc, events)


def _serving_log(path: str, cat) -> Result:  # noqa: ANN001
    """A serving log: the fault record of the failure it logged."""
    from sentinel.triage import records

    with open(path, "rb") as f:
        rep = serving_log.parse(_lines(f, serving_log.KEYS))
    if not rep.ok:
        raise CommandError(f"{path}: no failure in it (no CUDA error, device assert or TMA failure)", 1)
    return _of_record(records.from_log(rep, path, cat))


def _sanitizer(path: str, cat) -> Result:  # noqa: ANN001
    """A compute-sanitizer (or cuda-memcheck) report: the fault record of its first error."""
    from sentinel.triage import records

    with open(path, errors="replace") as f:
        rep = compute_sanitizer.parse(f.read())
    if not rep.ok:
        summary = f" (ERROR SUMMARY: {rep.error_summary} errors)" if rep.error_summary is not None else ""
        raise CommandError(f"{path}: no sanitizer error in it{summary}", 1)
    return _of_record(records.from_sanitizer(rep, path, cat))


def _watchdog(path: str, cat) -> Result:  # noqa: ANN001
    """A c10d watchdog / desync report: the hang it shows, its culprit ranks and who waits where."""
    from dataclasses import asdict

    from sentinel.triage.incident import Hang

    with open(path, "rb") as f:
        rep = watchdog.parse(_lines(f, watchdog.KEYS))
    if not rep.ok:
        raise CommandError(f"{path}: no watchdog line it could read", 1)
    from sentinel.triage.report import render_known

    match = cat.match("collective_hang", "", set(rep.evidence()), rep.text())
    known = match.as_dict() if match else None
    doc = asdict(rep) | {"culprit_ranks": rep.culprit_ranks(), "evidence": rep.evidence(), "known_issue": known}
    lines = []
    for pg in rep.pg_status[:1] or [None]:
        where = f"PG {pg.pg}" + (f" ({pg.pg_name})" if pg and pg.pg_name else "") if pg else "a process group"
        t = rep.timeouts[0] if rep.timeouts else None
        d = rep.desyncs[0] if rep.desyncs else None
        what = f" at {d.op} collective #{d.seq}" if d else (f" at {t.op} work #{t.seq}" if t else "")
        what += f", timeout {t.timeout_ms / 1000:g} s" if t else ""
        if "collective_hang" in rep.evidence():
            lines.append(f"{path}: collective hang in {where}{what}")
        else:  # NCCL's own warnings only (an init or transport failure): no watchdog timeout seen
            lines.append(f"{path}: {len(rep.nccl_warnings)} NCCL WARN line(s), no watchdog timeout")
        if pg:
            lines.append(f"  rank {pg.rank}: last enqueued #{pg.last_enqueued}, last completed #{pg.last_completed}")
    culprits = rep.culprit_ranks()
    for d in rep.desyncs:
        for ranks, text in d.culprits:
            lines.append(f"  culprit   rank {_span(ranks)}: {text}")
        for st in d.states:
            if set(st.ranks) - set(culprits):
                lines.append(f"  waiting   rank {_span(st.ranks)}: {st.state} {st.op} #{st.seq}")
    if rep.timeouts and not rep.desyncs:
        ranks = sorted({t.rank for t in rep.timeouts})
        lines.append(f"  timed out rank {_span(ranks)} (no desync report: set TORCH_NCCL_DESYNC_DEBUG=1 to have "
                     "the culprit named; a rank missing from this list never joined)")
    for w in rep.nccl_warnings[:5]:
        lines.append(f"  NCCL WARN {w}")
    lines += render_known(known)
    pg0 = rep.pg_status[0] if rep.pg_status else None
    t0 = rep.timeouts[0] if rep.timeouts else None
    d0 = rep.desyncs[0] if rep.desyncs else None
    waiting = {t.rank for t in rep.timeouts} | {p.rank for p in rep.pg_status} | {
        r for d in rep.desyncs for st in d.states for r in st.ranks}
    hang = Hang(path, pg=(pg0.pg_name or pg0.pg) if pg0 else "", op=(d0.op if d0 else t0.op if t0 else ""),
                seq=(d0.seq if d0 else t0.seq if t0 else None), culprits=culprits, waiting=sorted(waiting),
                detail=[f"NCCL WARN {w}" for w in rep.nccl_warnings[:3]])
    return Result(0, "\n".join(lines), doc, hang)


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

