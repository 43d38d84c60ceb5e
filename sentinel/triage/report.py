"""Fault records for people: the ``sentinel triage --list`` table and the ``sentinel triage`` report."""

from __future__ import annotations

import json
import textwrap
import time
from typing import TYPE_CHECKING, Any

from sentinel.triage.records import FaultRecord

if TYPE_CHECKING:
    from sentinel.triage.incident import Incident

__all__ = ["render_incident", "render_known", "render_list", "render_report"]


def render_list(rows: list[dict[str, Any]]) -> str:
    """`sentinel triage --list`: one line per journaled fault (``Journal.faults`` rows), newest first."""
    table = [["ID", "TIME (UTC)", "KIND", "SIGNATURE", "EXCEPTION", "KERNEL", "PID", "RANK", "POD/HOST", "KNOWN ISSUE",
              "NOTE"]]
    for d in rows:
        ident = d.get("identity") or {}
        rank = ident.get("rank")
        table.append([
            str(d["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.get("created_at") or 0)),
            d.get("kind") or "-", d["signature"], d["exception_class"], d.get("kernel_family") or "-",
            str(ident.get("pid", "-")), "-" if rank in (None, -1) else str(rank),
            ident.get("pod") or ident.get("host") or "-", (d.get("known_issue") or {}).get("id", "-"),
            f"consequence of {d['consequence_of']}" if d.get("consequence_of") is not None else "",
        ])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def render_known(ki: dict[str, Any] | None) -> list[str]:
    """The lines of a catalog match (``KnownIssue.as_dict``), indented for a report; None: none matched."""
    if not ki:
        return ["  known issue none matched"]
    lines = [f"  known issue {ki['id']}: {ki['title']}"]
    for label, key in (("cause", "root_cause"), ("fix", "remediation")):
        if ki.get(key):
            lines.append(textwrap.fill(ki[key], width=100, initial_indent=f"    {label:<10}", subsequent_indent=" " * 14))
    if ki.get("reference"):
        lines.append(f"    reference {ki['reference']}")
    if ki.get("runbook"):
        lines.append(f"    runbook   {ki['runbook']}")
    return lines


def render_report(rec: FaultRecord) -> str:
    """A report for a person: what, where, known issue, evidence, where to look."""
    ident = rec.identity or {}
    head = f"Fault {rec.id}" if rec.id is not None else "Fault"
    lines = [f"{head}  signature {rec.signature}  ({', '.join(x for x in (rec.kind, rec.source) if x)})"]
    if rec.consequence_of is not None:
        lines.append(f"  consequence of fault {rec.consequence_of}: see `sentinel triage --fault {rec.consequence_of}`")
    lines.append(f"  exception   {rec.exception}  [{rec.exception_class}]")
    if rec.kernel:
        lines.append(f"  kernel      {rec.kernel}")
        lines.append(f"  family      {rec.kernel_family}")
    g = rec.gdb or {}
    if g.get("pc"):
        where = f"{g.get('source_file')}:{g.get('source_line')}" if g.get("source_file") else ""
        lines.append(f"  at          PC {g['pc']} {g.get('function', '')} {where}".rstrip())
    if g.get("focus_block"):
        lines.append(f"  thread      block {g['focus_block']} thread {g['focus_thread']} of grid {g.get('grid')} "
                     f"x {g.get('block_dim')}, device {g.get('device')} SM {g.get('sm')} warp {g.get('warp')} "
                     f"lane {g.get('lane')}")
    lg = rec.log or {}
    if lg.get("assert_file"):
        lines.append(f"  at          {lg['assert_file']}:{lg['assert_line']}, block {lg['block']} thread {lg['thread']}"
                     f" ({lg['asserts']} failing thread(s) logged)")
    if lg.get("tma_strides"):
        lines.append(f"  TMA         shape {lg.get('tma_shape')} strides {lg['tma_strides']}")
    if lg.get("check"):  # a compute-sanitizer report (records.from_sanitizer)
        lines += _sanitizer_lines(lg)
    if rec.top_frame and rec.top_frame != lg.get("host_frame"):  # a sanitizer's host frame has its own line
        lines.append(f"  python      {rec.top_frame}")
    if rec.cuda_error and rec.cuda_error != rec.exception:
        lines.append(f"  error text  {rec.cuda_error}")
    if ident:
        rank = ident.get("rank", ident.get("tp_rank"))
        lines.append(f"  process     pid {ident.get('pid', '-')} rank {'-' if rank in (None, -1) else rank} "
                     f"job {ident.get('job') or '-'} host {ident.get('host') or '-'} "
                     f"{('pod ' + ident['pod']) if ident.get('pod') else ''}".rstrip())
    lines += render_known(rec.known_issue)
    if rec.evidence:
        lines.append(f"  evidence    {', '.join(rec.evidence)}")
    if rec.last_records:
        lines.append("  last records")
        for r in rec.last_records[-8:]:
            detail = {k: v for k, v in r.items() if k not in ("seq", "time", "kind", "step")}
            lines.append(f"    step {r['step']:>7}  {r['kind']:<8} {json.dumps(detail)}")
    if rec.faulthandler:
        fh = [ln for ln in rec.faulthandler.splitlines() if ln.strip()][:8]
        lines.append("  faulthandler")
        lines.extend(f"    {ln}" for ln in fh)
    if rec.core_path:
        lines.append(f"  coredump    {rec.core_path} ({rec.core_bytes} bytes)")
    for note in rec.notes:
        lines.append(f"  note        {note}")
    return "\n".join(lines)


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:32])) + (f" and {len(ranks) - 32} more" if len(ranks) > 32 else "")


def render_incident(inc: Incident) -> str:
    """Several files of one failure, together: the culprit and victim ranks, the joined fault record,
    the hang, the XIDs."""
    lines = [f"Incident from {len(inc.files)} files"]
    if inc.culprit_ranks:
        lines.append(f"  culprit     rank {_ranks(inc.culprit_ranks)}")
    if inc.victim_ranks:
        lines.append(f"  victims     rank {_ranks(inc.victim_ranks)} (waited in the collective)")
    for h in inc.hangs:
        where = f"{h.op or 'a collective'}" + (f" #{h.seq}" if h.seq is not None else "") + (f" in {h.pg}" if h.pg else "")
        lines.append(f"  hang        {where}: culprit rank {_ranks(h.culprits) or '?'} ({h.source})")
        lines.extend(f"              {d}" for d in h.detail)
    groups: dict[tuple[str, int], int] = {}
    for x in inc.xids:
        groups[(x["pci"], x["xid"])] = groups.get((x["pci"], x["xid"]), 0) + 1
    for (pci, xid), n in groups.items():
        lines.append(f"  xid         Xid {xid} on GPU {pci} x{n}")
    if inc.record is not None:
        lines.append("")
        lines.append(render_report(inc.record))
    return "\n".join(lines)


def _sanitizer_lines(lg: dict[str, Any]) -> list[str]:
    """The report lines of a compute-sanitizer fault: where, which thread, the access and the
    allocation it missed (bytes), the race's accesses, the host frame, the tool's counts."""
    out = []
    if lg.get("pc") or lg.get("source_file"):
        where = f"{lg['source_file']}:{lg.get('source_line')}" if lg.get("source_file") else ""
        out.append(f"  at          {('+' + lg['pc']) if lg.get('pc') else ''} {where}".rstrip())
    if lg.get("thread") or lg.get("block"):
        out.append(f"  thread      block {lg.get('block') or '?'} thread {lg.get('thread') or '?'}")
    if lg.get("access"):
        size = f" of {lg['size']} bytes" if lg.get("size") else ""
        state = f", {lg['address_state']}" if lg.get("address_state") else ""
        out.append(f"  access      {lg['access']}{size} at {lg.get('address') or '?'} in {lg.get('space') or '?'} "
                   f"memory{state}")
    if lg.get("leaked") is not None:
        out.append(f"  leak        {lg['leaked']} bytes at {lg.get('address') or '?'}, never freed")
    a = lg.get("allocation")
    if a:
        how = "inside" if a.get("relation") == "inside" else f"{a.get('distance')} bytes {a.get('relation')}"
        out.append(f"  allocation  {how} the nearest allocation, at {a.get('address')} of {a.get('size')} bytes")
    for acc in lg.get("accesses", [])[:4]:
        out.append(f"  race        {acc[:200]}")
    if lg.get("hazards"):
        out.append(f"  hazards     {lg['hazards']}")
    if lg.get("host_frame"):
        out.append(f"  host        {lg['host_frame']}")
    summary = f", ERROR SUMMARY {lg['error_summary']} error(s)" if lg.get("error_summary") is not None else ""
    out.append(f"  sanitizer   {lg.get('tool') or '?'}: {lg.get('errors')} report(s) read{summary}")
    for o in lg.get("others", [])[:5]:
        out.append(f"    {o['count']} x {o['kind'][:120]}" + (f" in {o['function'][:80]}" if o.get("function") else ""))
    return out
