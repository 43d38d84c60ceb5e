"""The daemon refuses ring files owned by other users unless told to accept them: a real ring,
written by a real hooked process and given to another uid (chown), is rejected by a real
`sentinel daemon` (counted in sentinel_rings_rejected_total{reason="foreign_owner"}, logged once)
and accepted with --allow-uid UID or --any-owner."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from security_support import OUTSIDER_GID, OUTSIDER_UID, PYTHON, SENTINEL, Procs, needs_root

pytestmark = needs_root  # only root can give a file away

STEPS = "import os, sentinel_hooks\nfor _ in range(3):\n    sentinel_hooks.step()\nprint(os.getpid())"


def test_foreign_ring_rejected_unless_allowed(h, procs: Procs, tmp_path: Path) -> None:
    res = h.run([SENTINEL, "run", "--dir", str(tmp_path / "src"), "--", PYTHON, "-c", STEPS], env=h.env())
    assert res.returncode == 0, res.stderr
    pid = res.stdout.strip()
    (ring,) = (tmp_path / "src" / "rings").glob("*.ring")

    cases = {"default": (), "allow_uid": ("--allow-uid", str(OUTSIDER_UID)), "any_owner": ("--any-owner",)}
    urls, logs = {}, {}
    for name, flags in cases.items():
        rings = tmp_path / name / "rings"
        rings.mkdir(parents=True, mode=0o700)
        copy = rings / ring.name
        shutil.copy2(ring, copy)
        os.chown(copy, OUTSIDER_UID, OUTSIDER_GID)
        port = h.free_port()
        urls[name], logs[name] = f"http://127.0.0.1:{port}/metrics", tmp_path / f"{name}.log"
        procs.start_daemon([SENTINEL, "daemon", "--dir", str(tmp_path / name), "--listen", f"127.0.0.1:{port}",
                            "--no-nvml", "--poll-interval", "0.05", "--log-level", "debug", *flags],
                           logs[name], urls[name], env=h.env())

    def steps(name: str) -> list:
        return h.samples(h.fetch(urls[name]), "sentinel_process_step", pid=pid)

    for name in ("allow_uid", "any_owner"):
        assert h.wait_for(lambda n=name: steps(n), timeout=20, what=f"the ring attached ({name})")[0][1] == 3.0
        assert h.samples(h.fetch(urls[name]), "sentinel_rings_rejected_total") == []

    rejected = h.wait_for(lambda: h.samples(h.fetch(urls["default"]), "sentinel_rings_rejected_total"),
                          timeout=20, what="the foreign ring counted")
    assert rejected == [({"reason": "foreign_owner"}, 1.0)]
    assert steps("default") == []
    # Several polls later: still one rejection, one log line, and never attached.
    polls = h.samples(h.fetch(urls["default"]), "sentinel_daemon_polls_total")[0][1]
    h.wait_for(lambda: h.samples(h.fetch(urls["default"]), "sentinel_daemon_polls_total")[0][1] > polls + 10,
               timeout=20, what="more polls")
    assert h.samples(h.fetch(urls["default"]), "sentinel_rings_rejected_total") == [({"reason": "foreign_owner"}, 1.0)]
    lines = [json.loads(ln) for ln in logs["default"].read_text().splitlines() if ln.startswith("{")]
    refused = [ln for ln in lines if ln["msg"] == "ring rejected"]
    assert len(refused) == 1 and refused[0]["reason"] == "foreign_owner" and str(OUTSIDER_UID) in refused[0]["detail"]
