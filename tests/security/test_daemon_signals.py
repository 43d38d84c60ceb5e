"""SIGTERM is never lost. The handler used to log, and a signal that landed while the main thread was
writing a log line made that write reentrant: it raised before setting the stop, and the daemon ran
on (in Kubernetes: until the grace period's SIGKILL, its journal unsaved). The race window is right
after a line appears, which is exactly when this test signals, several times over."""

from __future__ import annotations

import subprocess
from pathlib import Path

from security_support import SENTINEL


def test_sigterm_right_after_a_log_line_stops_the_daemon(h, tmp_path: Path) -> None:
    for i in range(5):
        proc = subprocess.Popen([SENTINEL, "daemon", "--dir", str(tmp_path / f"d{i}"), "--listen", "127.0.0.1:0",
                                 "--no-nvml"], env=h.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                if "daemon started" in line:
                    proc.terminate()  # while the write of that line may still be returning
                    break
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"run {i}: the daemon ignored SIGTERM: {proc.communicate()[0][-2000:]}") from None
        assert proc.returncode == 0, out
        assert '"msg": "stopping", "signal": "SIGTERM"' in out and '"msg": "daemon stopped"' in out, out
