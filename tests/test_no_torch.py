"""Acceptance 11: the daemon never imports torch; the hooks import no ML framework."""

from __future__ import annotations

import json

HEAVY = ("torch", "vllm", "sglang")
PROBE = f"\nimport sys, json\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"


def _loaded(h, code: str, env=None) -> dict:
    res = h.run_py(code + PROBE, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_daemon_modules_do_not_import_torch(h):
    res = h.run_py("import sentinel.cli.main, sentinel.daemon.loop, sentinel.exporter.collectors, sentinel.cli.status; import sys; "
                   "assert 'torch' not in sys.modules, 'torch imported'")
    assert res.returncode == 0, res.stderr


def test_running_daemon_code_paths_do_not_import_torch(h):
    """Not just the imports: start a daemon with file events, poll, export and read status."""
    code = f"""
import sentinel_hooks
sentinel_hooks.step()
from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.exporter.collectors import build_registry
from sentinel.cli.status import collect
from prometheus_client import generate_latest
d = Daemon(DaemonConfig(base_dir={h.dir!r}, use_events=True, rescan_interval=0))
d.poll_once()
assert len(d.snapshot.processes) == 1
assert b"sentinel_process_step" in generate_latest(build_registry(lambda: d.snapshot))
assert collect({h.dir!r})
d.close()
"""
    assert _loaded(h, code) == dict.fromkeys(HEAVY, False)


def test_hooks_import_no_framework(h):
    assert _loaded(h, "import sentinel_hooks") == dict.fromkeys(HEAVY, False)
    code = "import sentinel_hooks\nsentinel_hooks.step()\nsentinel_hooks.event(1, a=2)\nassert sentinel_hooks.stats()['active']"
    assert _loaded(h, code) == dict.fromkeys(HEAVY, False)


def test_injected_process_imports_no_framework(h):
    res = h.sentinel_run(PROBE, opts=("--eager",))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == dict.fromkeys(HEAVY, False)
    assert len(h.rings()) == 1
