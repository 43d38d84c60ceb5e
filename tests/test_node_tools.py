"""The node-side tools at 3 a.m., with or without the daemon: `sentinel status` says which process
misbehaves (mode, headroom, violations), `sentinel tail` shows a process's last records and follows
new ones, `sentinel triage --list` says what it found (or why there is nothing), and none of them
dies of a closed pipe. The daemon's log names the step a violation happened at, and its value."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("torch")

# An off-by-one at step 3 of a live process in contain mode, then an invalid seq_lens; it steps
# until GO appears.
SERVING = r"""
import os, sys, time, torch, sentinel_hooks as sh
table = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
for step in range(1, 6):
    if step == 3:
        table[0, 1] = 10  # in row 0's prefix (32 tokens: 2 pages)
    sh.check_paged_kv(table, 10, seq_lens=torch.tensor([32, 5]) if step < 5 else torch.tensor([40, 5]),
                      page_size=16, name="attn")
    sh.step()
print(os.getpid(), flush=True)
while not os.path.exists(sys.argv[1]):
    sh.step()
    time.sleep(0.05)
"""


def test_status_and_tail_say_which_process_misbehaves(h):
    go = h.scratch / "go"
    proc = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", SERVING, str(go)],
                   env=h.env(SENTINEL_MODE="contain", SENTINEL_CONTAIN_PAGE="9"), text=True)
    pid = int(proc.stdout.readline())
    try:
        (row,) = h.status_json()
        assert row["pid"] == pid and row["alive"] and row["mode"] == "contain"
        # Contain mode redirected the 10 to page 9 at step 3: from step 4 the highest index is 9.
        assert row["violations"] == {"page_table_oob": 1, "seqlens_invalid": 1}
        assert row["page_table_headroom"] == 0
        table = h.run([h.sentinel, "status", "--dir", h.dir], env=h.env()).stdout
        header, line = table.splitlines()[:2]
        assert header.split()[:8] == ["RANK", "PID", "ALIVE", "STEP", "HEARTBEAT", "MODE", "HEADROOM", "VIOLATIONS"]
        assert "contain" in line and "page_table_oob 1, seqlens_invalid 1" in line

        tail = h.run([h.sentinel, "tail", "--dir", h.dir, "--pid", str(pid), "-n", "200"], env=h.env())
        assert tail.returncode == 0, tail.stderr
        lines = tail.stdout.splitlines()
        assert lines[0].startswith("# ") and f"pid {pid}" in lines[0] and "alive" in lines[0]
        probes = [ln for ln in lines if " probe " in ln]
        assert len(probes) == 2 and '"check": "page_table_oob"' in probes[0] and '"b": 10' in probes[0]
        assert '"check": "seqlens_invalid"' in probes[1] and '"b": 40' in probes[1]  # the offending length

        follow = h.spawn([h.sentinel, "tail", "--dir", h.dir, "--pid", str(pid), "-n", "1", "--follow"], env=h.env(),
                         text=True)
        first = [follow.stdout.readline() for _ in range(3)]  # the header, the last record, a new one
        assert first[0].startswith("# ") and " step " in first[2]
        go.touch()
        out, _err = follow.communicate(timeout=60)
        assert follow.returncode == 0 and out.rstrip().endswith("# the process ended (exited)"), out[-500:]
    finally:
        go.touch()
        proc.wait(timeout=60)


def test_tail_and_triage_say_why_there_is_nothing(h, tmp_path: Path):
    missing = tmp_path / "nowhere"
    res = h.run([h.sentinel, "triage", "--dir", str(missing), "--list"], env=h.env())
    assert res.returncode == 2 and f"no such directory: {missing}" in res.stderr
    res = h.run([h.sentinel, "triage", "--dir", h.dir, "--list"], env=h.env())
    assert res.returncode == 1 and "no journal at" in res.stderr
    res = h.run([h.sentinel, "tail", "--dir", h.dir, "--pid", "12345"], env=h.env())
    assert res.returncode == 2 and "no rings in" in res.stderr
    daemon = h.daemon()
    daemon.stop()
    res = h.run([h.sentinel, "triage", "--dir", h.dir, "--list"], env=h.env())
    assert res.returncode == 0 and res.stdout.strip() == f"no faults journaled in {h.dir}"
    res = h.run([h.sentinel, "tail", "--dir", h.dir, "--pid", "12345"], env=h.env())
    assert res.returncode == 1 and "no ring of pid 12345" in res.stderr
    # A fresh directory has every folder the daemon watches: no "file events unavailable".
    assert "file events unavailable" not in daemon.log_text()


def test_triage_list_has_a_header_and_the_process(h):
    daemon = h.daemon()
    res = h.sentinel_run("import ctypes, sentinel_hooks as sh\nsh.step()\nctypes.string_at(0)\n",
                         env=h.env(RANK="3"))
    assert res.returncode == -11
    h.wait_for(lambda: json.loads(h.run([h.sentinel, "triage", "--dir", h.dir, "--list", "--json"],
                                        env=h.env()).stdout), what="the fault record")
    out = h.run([h.sentinel, "triage", "--dir", h.dir, "--list"], env=h.env()).stdout.splitlines()
    assert out[0].split()[:5] == ["ID", "TIME", "(UTC)", "KIND", "SIGNATURE"]
    cells = out[1].split()
    assert cells[0] == "1" and cells[3] == "crash" and cells[5] == "sigsegv" and cells[8] == "3"
    daemon.stop()


def test_a_closed_pipe_ends_the_cli_quietly(h):
    """`sentinel status | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    h.run([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", "import sentinel_hooks as sh; sh.step()"],
          env=h.env())
    r, w = os.pipe()
    os.close(r)  # the reader is already gone: the first write fails
    try:
        res = subprocess.run([h.sentinel, "status", "--dir", h.dir], stdout=w, stderr=subprocess.PIPE, env=h.env(),
                             timeout=60)
    finally:
        os.close(w)
    assert res.returncode == 141 and res.stderr == b"", res.stderr.decode()


def test_violation_log_lines_name_the_violating_step_and_value(h):
    daemon = h.daemon()
    res = h.sentinel_run(SERVING.replace("while not os.path.exists(sys.argv[1]):", "for _ in range(20):"),
                         args=("unused",), env=h.env())
    assert res.returncode == 0, res.stderr

    def lines():
        found = [json.loads(ln) for ln in daemon.log_text().splitlines() if '"invariant violation"' in ln]
        return found if len(found) == 2 else None

    oob, seq = sorted(h.wait_for(lines, what="two violation lines"), key=lambda d: d["check"])
    # The records carry the step counter at the call: 2 steps were marked before step 3's probe.
    assert (oob["check"], oob["value"], oob["limit"], oob["step"]) == ("page_table_oob", 10, 10, 2)
    assert (seq["check"], seq["value"], seq["limit"], seq["step"]) == ("seqlens_invalid", 40, 32, 4)
    daemon.stop()
