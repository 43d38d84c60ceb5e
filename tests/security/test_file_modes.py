"""Everything Sentinel creates under SENTINEL_DIR is private by default (dirs 0700, files 0600), or
shared with one group only (SENTINEL_GROUP / `sentinel daemon --group`: setgid dirs 2770, files 0640,
that group). Every creator is covered: `sentinel run` (SENTINEL_DIR, cores/, fr/), the hooks (rings/
and the ring, faults/ and the faulthandler file, evidence/ and an evidence file) and the daemon
(its folders, the journal and SQLite's -wal/-shm). Children run with umask 0, so the modes cannot
come from a kind umask."""

from __future__ import annotations

import contextlib
import grp
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_support import PYTHON, SENTINEL, SHARED_GID, needs_root

# The hooked program: a ring (a step), an evidence file, and the faulthandler file, which a clean
# exit removes when empty, so the process leaves through os._exit once it has stepped.
PROGRAM = r"""
import os, sentinel_hooks
from sentinel_hooks.probes import save_evidence
sentinel_hooks.step()
assert save_evidence("paged_kv", "attn/../../../x", {"n": 1})
assert sentinel_hooks.stats()["active"], sentinel_hooks.stats()
os._exit(0)
"""
# Code put on the command's PYTHONPATH: readable by a serving container of another uid, never writable.
HOOKS_COPY = "hooks"


def _tree(base: Path) -> dict[str, os.stat_result]:
    out = {".": base.lstat()}
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            path = Path(root) / name
            out[str(path.relative_to(base))] = path.lstat()
    return out


def _hooked_run(base: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SENTINEL, "run", "--dir", str(base), "--", PYTHON, "-c", PROGRAM], umask=0,
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def _daemon(base: Path, *extra: str) -> Iterator[None]:
    """A daemon on ``base`` (umask 0), running: SQLite removes -wal and -shm when it closes."""
    proc = subprocess.Popen([SENTINEL, "daemon", "--dir", str(base), "--listen", "127.0.0.1:0", "--no-nvml",
                             "--poll-interval", "0.05", *extra], umask=0, env={"PATH": os.environ["PATH"]},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # its JSON log: "daemon started" comes once the journal is open
            if "daemon started" in line:
                break
        yield
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
            raise AssertionError(f"the daemon ignored SIGTERM: {out[-2000:]}") from None
    assert proc.returncode == 0, out


def _expected(rel: str, st: os.stat_result, dir_mode: int, file_mode: int) -> int | None:
    if rel == HOOKS_COPY or rel.startswith(HOOKS_COPY + os.sep):
        return None
    return dir_mode if stat.S_ISDIR(st.st_mode) else file_mode


def _check(base: Path, dir_mode: int, file_mode: int, gid: int | None) -> list[str]:
    tree = _tree(base)
    wrong = []
    for rel, st in tree.items():
        want = _expected(rel, st, dir_mode, file_mode)
        mode = stat.S_IMODE(st.st_mode)
        if want is None:
            if mode & 0o022:
                wrong.append(f"{rel}: {oct(mode)} is group/world-writable")
        elif mode != want:
            wrong.append(f"{rel}: {oct(mode)}, expected {oct(want)}")
        if gid is not None and want is not None and st.st_gid != gid:  # the world-readable code: any group
            wrong.append(f"{rel}: group {st.st_gid}, expected {gid}")
    return wrong


def _kinds(base: Path) -> set[str]:
    """Which files were made (so a check over an empty tree cannot pass)."""
    names = set(_tree(base))
    found = {n.split(os.sep)[0] for n in names}
    found |= {"ring" for n in names if n.startswith("rings" + os.sep) and n.endswith(".ring")}
    found |= {"faulthandler" for n in names if n.startswith("faults" + os.sep + "faulthandler_")}
    found |= {"evidence file" for n in names if n.startswith("evidence" + os.sep) and n.endswith(".json")}
    found |= {n for n in names if n.startswith("journal.sqlite")}
    return found


MADE = {"rings", "ring", "cores", "fr", "faults", "faulthandler", "evidence", "evidence file", "journal.sqlite",
        "journal.sqlite-wal", "journal.sqlite-shm", HOOKS_COPY}


def test_private_by_default_whatever_the_umask(tmp_path: Path) -> None:
    base = tmp_path / "new" / "sentinel"  # neither folder exists: `sentinel run` makes both
    res = _hooked_run(base)
    assert res.returncode == 0, res.stderr
    with _daemon(base):
        assert MADE <= _kinds(base), sorted(_kinds(base))
        assert _check(base, 0o700, 0o600, None) == []
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700  # the parent it made too
    # The evidence file name came from a probe-site name with "../": it stayed in evidence/.
    assert all(p.parent == base / "evidence" for p in base.rglob("*.json"))


def test_hooks_alone_make_a_private_dir(tmp_path: Path) -> None:
    """Without `sentinel run`: the hooks create SENTINEL_DIR themselves (os.makedirs would leave the
    parents it creates to the umask, 0777 here)."""
    base = tmp_path / "a" / "b"
    res = subprocess.run([PYTHON, "-c", "import sentinel_hooks; sentinel_hooks.step()"], umask=0,
                         env={"PATH": os.environ["PATH"], "SENTINEL_DIR": str(base)}, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "a", base, base / "rings")] == ["0o700"] * 3
    (ring,) = (base / "rings").glob("*.ring")
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600


@needs_root  # only root may give files to a group it is not in
def test_group_mode_shares_with_that_group_only(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    res = _hooked_run(base, SENTINEL_GROUP=str(SHARED_GID))
    assert res.returncode == 0, res.stderr
    with _daemon(base, "--group", str(SHARED_GID)):
        assert MADE <= _kinds(base), sorted(_kinds(base))
        assert _check(base, 0o2770, 0o640, SHARED_GID) == []


def test_group_by_name_and_unknown_group(tmp_path: Path) -> None:
    from sentinel_hooks.writer import resolve_group

    mine = grp.getgrgid(os.getgid()).gr_name
    assert resolve_group(mine) == os.getgid() and resolve_group(str(os.getgid())) == os.getgid()
    with pytest.raises(ValueError, match="no such group"):
        resolve_group("sentinel-no-such-group")

    # The daemon refuses to start, with one line; the hooks turn into counted no-ops, with one line.
    res = subprocess.run([SENTINEL, "daemon", "--dir", str(tmp_path / "d"), "--group", "sentinel-no-such-group"],
                         capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no such group" in res.stderr, res.stderr
    code = "import sentinel_hooks as s; s.step(); print(s.stats()['active'], s.stats()['noops'])"
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PATH": os.environ["PATH"], "SENTINEL_DIR": str(tmp_path / "h"),
                              "SENTINEL_GROUP": "sentinel-no-such-group"})
    assert res.returncode == 0 and res.stdout == "False 1\n", res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("sentinel: hooks disabled"), res.stderr
