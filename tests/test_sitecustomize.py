"""Acceptance 8: `sentinel run` chains to the user's own sitecustomize and still injects the hooks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# The marker names the interpreter's first argument: the `sentinel` CLI itself is a Python
# program started with the same PYTHONPATH (so it runs this too) before it execs the command.
USER_SITECUSTOMIZE = """
import os, sys
os.environ["USER_SITECUSTOMIZE"] = "ran"
print("USER-SITECUSTOMIZE-MARKER", os.path.basename(sys.orig_argv[1]), flush=True)
"""
TARGET_MARKER = "USER-SITECUSTOMIZE-MARKER -c"

PROBE = r"""
import json, os, sys
before = {"env": os.environ.get("USER_SITECUSTOMIZE"), "inject": "sentinel_hooks.inject" in sys.modules,
          "armed": getattr(sys.modules.get("sentinel_hooks.inject"), "armed", None)}
import sentinel_hooks
for _ in range(3):
    sentinel_hooks.step()
print(json.dumps({"before": before, "hooks_file": sentinel_hooks.__file__, "stats": sentinel_hooks.stats(),
                  "pid": os.getpid(), "pythonpath": os.environ.get("PYTHONPATH", "")}))
"""


@pytest.fixture
def user_site(h) -> Path:
    d = h.scratch / "usersite"
    d.mkdir()
    (d / "sitecustomize.py").write_text(USER_SITECUSTOMIZE)
    return d


def test_user_sitecustomize_still_runs_and_hooks_injected(h, user_site):
    res = h.sentinel_run(PROBE, env=h.env(PYTHONPATH=str(user_site)))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines.count(TARGET_MARKER) == 1, res.stdout  # run exactly once in the command, not twice
    assert lines.index(TARGET_MARKER) < len(lines) - 1  # at start-up, before the program's output
    info = json.loads(lines[-1])
    assert info["before"] == {"env": "ran", "inject": True, "armed": True}
    assert Path(info["hooks_file"]).resolve().is_relative_to(Path(h.dir).resolve() / "hooks")
    assert info["stats"]["active"] and info["stats"]["steps"] == 3
    # The user's path is kept, after the injected folders.
    parts = info["pythonpath"].split(os.pathsep)
    assert parts[-1] == str(user_site) and parts[0].endswith(os.path.join("sentinel_hooks", "_inject"))
    (ring,) = h.rings()
    assert Path(info["stats"]["ring"]).name == ring.name and f".{info['pid']}." in ring.name
    assert "sentinel:" not in res.stderr


def test_eager_injection_creates_ring_without_code_changes(h, user_site):
    """No hook call in the program at all: with --eager the injected sitecustomize makes the ring."""
    code = "import os; print('pid', os.getpid())"
    res = h.sentinel_run(code, env=h.env(PYTHONPATH=str(user_site)), opts=("--eager",))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines().count(TARGET_MARKER) == 1
    pid = int(res.stdout.splitlines()[-1].split()[1])
    (row,) = h.status_json()
    assert row["pid"] == pid and row["exit"] == "exited" and row["step"] == 0


def test_lazy_injection_leaves_no_ring_for_helpers(h):
    """Without --eager, a Python process that never calls a hook leaves no ring behind."""
    res = h.sentinel_run("import sys; print('sentinel_hooks.inject' in sys.modules)")
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr
    assert h.rings() == []
