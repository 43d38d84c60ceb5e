"""Shared pieces of tests/security: processes run as other users, daemons started with extra flags,
HTTP(S) requests with credentials. The fixtures are in conftest.py."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ASUSER = HERE / "helpers" / "asuser.py"
TESTS = HERE.parent
PYTHON = sys.executable
SENTINEL = str(Path(sys.executable).parent / "sentinel")
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="runs children as other users and gives files away: needs root")

# uids and gids with no /etc/passwd or /etc/group entry: the kernel needs none to run a process as
# them or to own a file, so the tests leave the machine's user database alone.
SHARED_GID = 47000  # the group the serving process and the sidecar share
SERVING_UID = SERVING_GID = 47001
DAEMON_UID = DAEMON_GID = 47002
OUTSIDER_UID = OUTSIDER_GID = 47003


class Users:
    """Runs commands as other uids/gids through helpers/asuser.py (setgroups, setgid, setuid, exec).

    ``python`` is an interpreter those users can run: this one, or, when it lives under a folder
    they cannot enter (a 0700 home), the same interpreter and site-packages bind-mounted into a
    world-readable temp folder, in a private mount namespace per command (nothing on the host)."""

    def __init__(self) -> None:
        self.python = PYTHON
        self.binds: list[str] = []
        self.env: list[str] = []
        self._root: Path | None = None
        if not self.works():
            self._expose_interpreter()
            if not self.works():
                self.close()
                pytest.skip("no interpreter with Sentinel installed can be run by an unprivileged uid here")

    def argv(self, cmd: list[str], uid: int, gid: int, groups: tuple[int, ...] = (), binds: tuple[str, ...] = (),
             umask: str | None = None) -> list[str]:
        out = [PYTHON, str(ASUSER), "--uid", str(uid), "--gid", str(gid), "--groups", ",".join(map(str, groups))]
        for b in (*self.binds, *binds):
            out += ["--bind", b]
        for e in self.env:
            out += ["--env", e]
        if umask is not None:
            out += ["--umask", umask]
        return out + ["--", *cmd]

    def sentinel(self, *args: str) -> list[str]:
        return [self.python, "-m", "sentinel", *args]

    def works(self) -> bool:
        probe = [self.python, "-c", "import sentinel.daemon, sentinel_hooks, prometheus_client"]
        res = subprocess.run(self.argv(probe, OUTSIDER_UID, OUTSIDER_GID), capture_output=True, timeout=60,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        return res.returncode == 0

    def _expose_interpreter(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="sntpy", dir="/tmp"))
        root.chmod(0o755)
        self._root = root
        base = os.path.realpath(sys.base_prefix)
        site = os.path.realpath(sysconfig.get_paths()["purelib"])
        exe = os.path.relpath(os.path.realpath(getattr(sys, "_base_executable", sys.executable)), base)
        venv = root / "venv"
        lib = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        for d in (root / "py", root / "site", venv / "bin", lib):
            d.mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(root / "py" / exe)
        (lib / "site-packages").symlink_to(root / "site")
        (venv / "pyvenv.cfg").write_text(f"home = {root / 'py' / os.path.dirname(exe)}\n"
                                         "include-system-site-packages = false\n")
        self.binds = [f"{base}:{root / 'py'}", f"{site}:{root / 'site'}"]
        # A shared libpython found through an absolute RUNPATH under the same hidden folder.
        self.env = [f"LD_LIBRARY_PATH={root / 'py' / 'lib'}"]
        self.python = str(venv / "bin" / "python")

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)  # the mounts lived in namespaces long gone


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path  # the CA that signs the server's and the client's certificates
    server_cert: Path  # for 127.0.0.1 and localhost
    server_key: Path
    client_cert: Path  # signed by ``ca``
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"openssl {' '.join(args)}: {res.stderr}"


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=sentinel test {name}",
             cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


def make_pki(d: Path) -> Pki:
    """Certificates made with the real openssl (EC P-256, valid two days)."""
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
               d / "rogue.crt", d / "rogue.key")


def world_dir(prefix: str = "sntsec", mode: int = 0o755) -> Path:
    """A temp folder other users can enter (mkdtemp makes 0700 ones)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(mode)
    return path


def auth_header(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def request(url: str, *, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> tuple[int, str]:
    """(HTTP status, body) of a GET; 4xx/5xx are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


class Procs:
    """Every process a test starts, stopped at teardown (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, **kw) -> subprocess.Popen:
        with open(log, "ab") as f:
            kw.setdefault("stdout", f)
            kw.setdefault("stderr", f)
            proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.all.append(proc)
        return proc

    def start_daemon(self, argv: list[str], log: Path, url: str, *, context: ssl.SSLContext | None = None,
                     headers: dict[str, str] | None = None, timeout: float = 30.0, **kw) -> subprocess.Popen:
        """Start a daemon and wait (with a deadline) until it serves /metrics at ``url``."""
        proc = self.start(argv, log, **kw)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}: {log.read_text(errors='replace')[-3000:]}")
            try:
                status, body = request(url, context=context, headers=headers, timeout=2.0)
                if status == 200 and "sentinel_daemon_polls_total" in body:
                    return proc
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not serve {url} within {timeout}s: "
                                     f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def stop_all(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.all:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
