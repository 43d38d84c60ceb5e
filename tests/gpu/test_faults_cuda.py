"""A real CUDA fault under `sentinel run` becomes a journaled fault record: the right kernel, the
right exception, the catalog match. How long after the fault (the driver writing the dump, then a
cuda-gdb run: seconds, varying with the GPU, the dump size and the host) is printed, a figure of
the machine; the wait for the record is bounded only as a hang guard. Skipped without CUDA or
cuda-gdb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from journal_wait import first_fault  # noqa: E402

from sentinel.daemon.loop import Daemon, DaemonConfig  # noqa: E402
from sentinel.triage.readers import cudagdb  # noqa: E402

if cudagdb.find_cuda_gdb() is None:
    pytest.skip("needs cuda-gdb", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAULTY = textwrap.dedent(r"""
    import sys, time, torch
    import paged_attention as pa
    import sentinel_hooks as sh
    num_pages, page = 8657, 64
    cache = torch.randn(num_pages * page, device="cuda", dtype=torch.bfloat16)
    table = torch.randint(0, num_pages, (512,), device="cuda", dtype=torch.int32)
    out = torch.empty(512 * page, device="cuda", dtype=torch.bfloat16)
    for step in range(20):
        sh.step()
        sh.check_paged_kv(table.view(-1, 1), num_pages, name="attn")
        pa.paged_gather[(512,)](table, cache, out, PAGE=page)
    table[7] = num_pages            # seed 000: silent off-by-one; the probe sees it
    sh.check_paged_kv(table.view(-1, 1), num_pages, name="attn")
    sh.flush()
    table[9] = 2**30                # then the read that faults
    print("FAULT_AT", time.time(), flush=True)
    pa.paged_gather[(512,)](table, cache, out, PAGE=page)
    torch.cuda.synchronize()
""")


def test_real_fault_becomes_a_triaged_record(tmp_path):
    base = str(tmp_path / "s")
    d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0.2, crash_grace_s=30))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    script = tmp_path / "faulty.py"  # Triton wants its kernels in a file
    script.write_text(FAULTY)
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "run", "--dir", base, "--", sys.executable, str(script)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rec = first_fault(d)
        journaled_at = time.time()
        out, err = proc.communicate(timeout=60)
        assert rec is not None, f"no coredump fault journaled; child stderr: {err[-2000:]}"
        fault_at = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("FAULT_AT")))
        took = journaled_at - fault_at
        assert rec["exception_class"] == "illegal_address", rec["exception"]
        assert rec["kernel_family"] == "paged_gather"
        assert rec["known_issue"]["id"] == "paged-kv-page-index-off-by-one", rec["known_issue"]
        assert "page_table_oob" in rec["evidence"]
        assert rec["identity"]["pid"] == proc.pid or rec["identity"]["pid"] > 0
        assert "illegal memory access" in rec["cuda_error"].lower() or rec["cuda_error"] == ""
        assert any(r.get("check") == "page_table_oob" for r in rec["last_records"])
        # The manual path's floor: the driver finishing the dump (its mtime), then one cuda-gdb run.
        try:
            dump_written_s = round(os.stat(rec["core_path"]).st_mtime - fault_at, 2)
        except (OSError, TypeError):
            dump_written_s = None
        print(json.dumps({"fault_to_record_s": round(took, 2), "triage_s": rec["triage_seconds"],
                          "dump_written_s": dump_written_s, "core_bytes": rec["core_bytes"],
                          "signature": rec["signature"]}))
        assert took > 0, took  # journaled after the fault, not before; how long after is the machine's
    finally:
        if proc.poll() is None:
            proc.kill()
        d.close()


def test_a_real_fault_logged_and_dumped_is_one_record(tmp_path):
    """The same real fault under `sentinel run --log-tap`: the CUDA error line torch prints (the log
    watcher) and the GPU coredump (cuda-gdb) are one fault record, not two; the coredump fills in
    the kernel. Which comes first is the machine's: both orders merge."""
    base = str(tmp_path / "s")
    d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0.2, crash_grace_s=30, kmsg=""))
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "run", "--dir", base, "--log-tap", "--", sys.executable,
                             str(script)], env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        rows: list = []
        while time.monotonic() < deadline:
            d.poll_once()
            rows = d.journal.faults()
            if rows and any(r["source"] == "coredump" or "coredump" in (r.get("seen_as") or []) for r in rows):
                break
            time.sleep(0.2)
        _out, err = proc.communicate(timeout=60)
        for _ in range(50):  # what is still in flight (the death, the log's last lines) lands in the same record
            d.poll_once()
            time.sleep(0.1)
        rows = d.journal.faults()
        assert len(rows) == 1, [(r["source"], r["exception"]) for r in rows]
        rec = rows[0]
        seen = {rec["source"], *(rec.get("seen_as") or [])}
        assert "coredump" in seen and rec["kernel_family"] == "paged_gather", (seen, rec["kernel_family"])
        assert rec["known_issue"]["id"] == "paged-kv-page-index-off-by-one"
        if "illegal memory access" in err:
            assert "log" in seen, seen
        print(json.dumps({"one_record_from": sorted(seen)}))
    finally:
        if proc.poll() is None:
            proc.kill()
        d.close()


def test_a_real_fault_with_coredumps_off_is_recorded_from_its_log_line(tmp_path):
    """Production often runs with GPU coredumps off: the real fault's CUDA error line, read from the tap,
    is the record, with the probe's evidence from the ring and the known issue."""
    base = str(tmp_path / "s")
    d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0.2, crash_grace_s=5, kmsg=""))
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY)
    env = dict(os.environ, PYTHONUNBUFFERED="1", SENTINEL_COREDUMP="0")
    proc = subprocess.Popen([sys.executable, "-m", "sentinel", "run", "--dir", base, "--log-tap", "--", sys.executable,
                             str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        rows: list = []
        while time.monotonic() < deadline and not rows:
            d.poll_once()
            rows = d.journal.faults()
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
        for _ in range(80):  # the death, merged into the same record
            d.poll_once()
            time.sleep(0.1)
        rows = d.journal.faults()
        assert len(rows) == 1, [(r["source"], r["exception"]) for r in rows]
        rec = rows[0]
        assert rec["source"] == "log" and rec["exception_class"] == "illegal_address", (rec["exception"], err[-1500:])
        assert "page_table_oob" in rec["evidence"]
        assert rec["known_issue"]["id"] == "paged-kv-page-index-off-by-one"
        fault_at = float(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("FAULT_AT")))
        print(json.dumps({"log_fault_to_record_s": round(rec["created_at"] - fault_at, 2),
                          "seen_as": rec.get("seen_as")}))
    finally:
        if proc.poll() is None:
            proc.kill()
        d.close()
