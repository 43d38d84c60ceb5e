"""Shared fixtures: real directories, real subprocesses, real HTTP. No mocks.

Every wait has a deadline; nothing relies on a fixed sleep for correctness.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

PYTHON = str(Path(sys.executable))
SENTINEL = str(Path(sys.executable).parent / "sentinel")
TESTS_DIR = Path(__file__).resolve().parent
HELPERS = TESTS_DIR / "helpers"


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment for children: PATH kept, nothing Sentinel-related inherited."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
    for key in ("HOME", "LANG", "LC_ALL", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra)
    return env


def wait_for(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``pred`` until it returns a truthy value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        assert resp.status == 200, resp.status
        return resp.read().decode("utf-8")


def parse_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text -> [(sample name, labels, value)]."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    return [
        (lab, val) for n, lab, val in parse_samples(text)
        if n == name and all(lab.get(k) == v for k, v in labels.items())
    ]


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant, listed before any dies. A killpg is not enough:
    torchrun starts each rank in a session of its own (start_new_session=True), so the ranks of a
    killed torchrun would live on, reparented to init."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def ring_files(base: str | os.PathLike) -> list[Path]:
    rings = Path(base) / "rings"
    if not rings.is_dir():
        return []
    return sorted(p for p in rings.iterdir() if p.name.endswith(".ring") and not p.name.startswith("."))


class DaemonProc:
    """A `sentinel daemon` subprocess on a free port."""

    def __init__(self, base_dir: str, port: int, log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.base_dir = base_dir
        self.port = port
        self.log_path = log_path
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout: float = 15.0) -> DaemonProc:
        log = open(self.log_path, "ab")  # closed in kill()/stop()
        self._log = log
        self.proc = subprocess.Popen(
            [SENTINEL, "daemon", "--dir", self.base_dir, "--listen", f"127.0.0.1:{self.port}",
             "--poll-interval", "0.05", "--rescan-interval", "0.25", "--log-level", "debug", *self.args],
            env=base_env(), stdout=log, stderr=log, start_new_session=True,
        )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            return "sentinel_daemon_polls_total" in fetch(self.url, timeout=1.0)

        deadline = time.monotonic() + timeout
        while True:
            try:
                if up():
                    return self
            except RuntimeError:
                raise
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not serve /metrics within {timeout}s: {self.log_text()[-2000:]}")
            time.sleep(0.05)

    def scrape(self, timeout: float = 2.0) -> str:
        return fetch(self.url, timeout=timeout)

    def rss_bytes(self) -> int:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self._log.close()
        return rc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None and not self._log.closed:
            self._log.close()


class Harness:
    """Starts processes for one test and reaps every one of them at teardown."""

    python = PYTHON
    sentinel = SENTINEL
    helpers = HELPERS

    def __init__(self, base_dir: str, scratch: Path) -> None:
        self.dir = base_dir
        self.scratch = scratch
        self.procs: list[subprocess.Popen] = []
        self.daemons: list[DaemonProc] = []
        self.extra_pids: list[int] = []

    wait_for = staticmethod(wait_for)
    free_port = staticmethod(free_port)
    fetch = staticmethod(fetch)
    samples = staticmethod(samples)
    parse_samples = staticmethod(parse_samples)
    env = staticmethod(base_env)

    def rings(self, base: str | None = None) -> list[Path]:
        return ring_files(base or self.dir)

    def hooked_env(self, **extra: str) -> dict[str, str]:
        """Environment for a child that imports sentinel_hooks directly (installed in the venv)."""
        return base_env(SENTINEL_DIR=self.dir, **extra)

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(argv, env=env if env is not None else self.hooked_env(), **kw)
        self.procs.append(proc)
        return proc

    def spawn_py(self, code: str, env: dict[str, str] | None = None, args: tuple[str, ...] = (), **kw) -> subprocess.Popen:
        return self.spawn([PYTHON, "-c", code, *args], env=env, **kw)

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 30.0, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(argv, env=env if env is not None else self.hooked_env(), timeout=timeout, **kw)

    def run_py(self, code: str, env: dict[str, str] | None = None, args: tuple[str, ...] = (), timeout: float = 30.0):
        return self.run([PYTHON, "-c", code, *args], env=env, timeout=timeout)

    def sentinel_run(self, code: str, *, base_dir: str | None = None, env: dict[str, str] | None = None,
                     opts: tuple[str, ...] = (), args: tuple[str, ...] = (), timeout: float = 30.0):
        """Run a Python snippet under `sentinel run --dir D -- python -c CODE`."""
        argv = [SENTINEL, "run", "--dir", base_dir or self.dir, *opts, "--", PYTHON, "-c", code, *args]
        return self.run(argv, env=env if env is not None else base_env(), timeout=timeout)

    def status_json(self, base_dir: str | None = None) -> list[dict]:
        res = self.run([SENTINEL, "status", "--dir", base_dir or self.dir, "--json"], env=base_env(), timeout=30)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def daemon(self, base_dir: str | None = None, port: int | None = None, args: tuple[str, ...] = ()) -> DaemonProc:
        """A `sentinel daemon` subprocess; ``args`` are extra command-line options."""
        d = DaemonProc(base_dir or self.dir, port or free_port(), self.scratch / f"daemon{len(self.daemons)}.log", args)
        self.daemons.append(d)
        return d.start()

    kill_tree = staticmethod(kill_tree)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_tree(proc.pid)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        for pid in self.extra_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in self.daemons:
            d.stop()


@pytest.fixture
def sdir() -> Iterator[str]:
    """A fresh SENTINEL_DIR with a short path under /tmp (ring names embed host, pid and ns)."""
    path = tempfile.mkdtemp(prefix="snt", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def h(sdir: str, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(sdir, tmp_path)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture
def promtool_path() -> str:
    """promtool, or a skip (a failure when CI is set: CI must install it with `make tools`)."""
    path = shutil.which("promtool") or ("/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None)
    if path:
        return path
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail("promtool is not installed and CI is set: install it (make tools / apt-get install prometheus)")
    pytest.skip("promtool is not installed (apt-get install prometheus); not failing because CI is not set")
