"""The ring writer: one memory-mapped file per process, one struct.pack_into per record.

No lock and no syscall per record. The file is fully allocated up front (posix_fallocate), so a
full disk shows up as a failed start (a counted no-op) and never as a SIGBUS on a later store.
The writer holds an exclusive flock on its file for its whole life: the kernel drops it when the
process dies, however it dies, which is how the daemon tells a dead writer from a live one.
"""

from __future__ import annotations

import fcntl
import functools
import itertools
import mmap
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import layout
from . import ringformat as rf
from .env import DIR_MODE, FILE_MODE, FRAMEWORK, GROUP, HOST, JOB, NAMESPACE, POD, read

__all__ = [
    "identity_from_env", "GROUP_DIR_MODE", "GROUP_FILE_MODE", "resolve_group", "FsPolicy",
    "check_identity_fields", "RingWriter",
]

_time_ns = time.time_ns
_RECORDS_OFFSET = rf.RECORDS_OFFSET
_STEP, _LAST_STEP_NS = rf.Word.STEP.value, rf.Word.LAST_STEP_NS.value


def identity_from_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """Process identity from the launcher's environment (torchrun, SLURM, MPI, Kubernetes)."""
    env = os.environ if env is None else env

    def first_int(*names: str) -> int | None:
        # A launcher value that is not a plain int32 (a typo, '--1', '²', a huge number) is taken as
        # unset: the identity field is then empty, and the ring is still created.
        for name in names:
            value = env.get(name, "").strip()
            if value.isascii() and re.fullmatch(r"-?[0-9]{1,10}", value) and -2**31 <= int(value) < 2**31:
                return int(value)
        return None

    elastic = env.get("TORCHELASTIC_RUN_ID", "")
    elastic = "" if elastic == "none" else elastic  # torchrun's placeholder for standalone runs
    host = read(HOST, env) or socket.gethostname()
    pod = read(POD, env) or env.get("POD_NAME") or ""
    namespace = read(NAMESPACE, env) or env.get("POD_NAMESPACE") or ""
    job = read(JOB, env) or elastic or env.get("SLURM_JOB_ID") or ""
    if not job and env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        addr = env["MASTER_ADDR"]
        # A loopback rendezvous names no job by itself: every single-node job uses localhost:29500.
        addr = host if addr in ("localhost", "127.0.0.1", "::1") else addr
        job = f"{addr}:{env['MASTER_PORT']}"
    if not job and pod:
        # No launcher says which job this is: the pod is one (vLLM and SGLang set none of the above).
        # Without it, every such pod's hangs, skews and consequences would share the job "".
        job = f"{namespace}/{pod}" if namespace else pod
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "rank": first_int("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"),
        "local_rank": first_int("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"),
        "world_size": first_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"),
        "job": job,
        "host": host,
        "pod": pod,
        "namespace": namespace,
        "framework": read(FRAMEWORK, env),
        "framework_version": "",
    }


# -- who may read what: modes and group of everything Sentinel creates under SENTINEL_DIR ------------

GROUP_DIR_MODE = 0o2770  # setgid: entries made inside inherit the group; the group may add and read
GROUP_FILE_MODE = 0o640  # the writer writes, the group (the sidecar) reads


@functools.lru_cache(maxsize=8)
def resolve_group(value: str | int) -> int:
    """A group name or numeric gid -> gid (looked up once per process). Raises ValueError."""
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    import grp

    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {text!r}") from None


@dataclass(frozen=True)
class FsPolicy:
    """Modes (and group) for the directories and files Sentinel creates under SENTINEL_DIR.

    Private by default: dirs 0700, files 0600. With a group (SENTINEL_GROUP for the hooks,
    ``sentinel daemon --group``) they are shared with that group only: setgid dirs 2770 and files
    0640, owned by the group. Modes are set exactly, whatever the process's umask; directories
    and files that already exist are left as they are."""

    dir_mode: int = 0o700
    file_mode: int = 0o600
    gid: int | None = None

    @classmethod
    def for_group(cls, group: str | int | None, dir_mode: int | None = None, file_mode: int | None = None) -> FsPolicy:
        gid = None if group is None or str(group).strip() == "" else resolve_group(group)
        shared = gid is not None
        return cls(dir_mode=dir_mode if dir_mode is not None else (GROUP_DIR_MODE if shared else 0o700),
                   file_mode=file_mode if file_mode is not None else (GROUP_FILE_MODE if shared else 0o600),
                   gid=gid)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> FsPolicy:
        """From SENTINEL_GROUP, SENTINEL_DIR_MODE and SENTINEL_FILE_MODE (octal). Raises ValueError for
        a mode that is not one, or a group that does not exist: files must not get modes nobody asked for."""
        modes = []
        for var in (DIR_MODE, FILE_MODE):
            reading = var.read(env)
            if reading.problem:
                raise ValueError(reading.problem)
            modes.append(reading.value)
        return cls.for_group(read(GROUP, env), *modes)

    def own(self, path: str | int, mode: int) -> None:
        """Give ``path`` (or an open fd) this policy's group, then exactly ``mode``."""
        # chown first: changing the group may clear the setgid bit, chmod then sets the exact mode.
        if isinstance(path, int):
            if self.gid is not None:
                os.fchown(path, -1, self.gid)
            os.fchmod(path, mode)
        else:
            if self.gid is not None:
                os.chown(path, -1, self.gid, follow_symlinks=False)
            os.chmod(path, mode)

    def make_dirs(self, path: str) -> None:
        """``mkdir -p``: each directory created here gets this policy's mode and group."""
        missing, p = [], os.path.abspath(path)
        while not os.path.isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o700)  # private until its mode and group are set
            except FileExistsError:
                if os.path.isdir(d):
                    continue  # made meanwhile by another process: theirs, left as it is
                raise
            self.own(d, self.dir_mode)

    def create_file(self, path: str, flags: int) -> int:
        """Open a new file (O_CREAT, never through a symlink) with this policy's mode and group; an fd."""
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            self.own(fd, self.file_mode)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        return fd


def check_identity_fields(fields: dict[str, Any]) -> None:
    """Raise KeyError unless every key of ``fields`` is a ring identity field (``ringformat.IDENTITY_TEXT``
    or ``IDENTITY_INT``); the values are not checked."""
    unknown = set(fields) - set(rf.IDENTITY_TEXT) - set(rf.IDENTITY_INT)
    if unknown:
        raise KeyError(f"unknown identity fields: {sorted(unknown)}")


class RingWriter:
    """Single-process writer of one ring file. Create with :meth:`create`."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, capacity: int, identity: dict[str, Any]):
        self.path = path
        self.capacity = capacity
        self.identity = identity
        self._fd = fd
        self._mm = mm
        self._mask = capacity - 1
        self._seq = itertools.count(1)  # next() is atomic under the GIL: threads get distinct slots
        self._pack = rf.RECORD.pack_into
        # One aligned 8-byte store per header word: readers poll them (see ringformat.Word).
        self._words = rf.header_words(mm)
        self._identity_lock = threading.Lock()
        self._steps = itertools.count(1)
        self._step = 0
        self._step32 = 0
        self._last_step_ns = 0
        self._dropped = 0
        self._strings: dict[str, int] = {}
        self._strings_used = 1  # offset 0 means "no name"
        self._strings_lock = threading.Lock()
        self.on_milestone: Any = None  # called with the step number at steps 1, 2, 4, 8, ...
        self.closed = False

    @classmethod
    def create(
        cls,
        base_dir: str,
        identity: dict[str, Any] | None = None,
        capacity: int = rf.DEFAULT_CAPACITY,
        file_mode: int = 0o600,
        dir_mode: int = 0o700,
        gid: int | None = None,
    ) -> RingWriter:
        """Create, allocate and map a new ring under ``base_dir/rings``. Raises OSError on failure.

        ``file_mode``, ``dir_mode`` and ``gid`` are set exactly (see FsPolicy), whatever the umask."""
        identity = dict(identity_from_env() if identity is None else identity)
        identity.setdefault("pid", os.getpid())
        identity.setdefault("ppid", os.getppid() if identity["pid"] == os.getpid() else -1)
        created = _time_ns()
        rdir = layout.rings_dir(base_dir)
        policy = FsPolicy(dir_mode=dir_mode, file_mode=file_mode, gid=gid)
        policy.make_dirs(rdir)
        host = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(identity.get("host", "")))[:64]
        name = f"{host or 'host'}.{identity['pid']}.{created}{rf.RING_SUFFIX}"
        final = os.path.join(rdir, name)
        tmp = os.path.join(rdir, "." + name + ".tmp")  # readers skip dot files until the rename
        size = rf.file_size(capacity)
        fd = policy.create_file(tmp, os.O_RDWR | os.O_EXCL)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, size)
            os.pwrite(fd, rf.pack_header(identity, capacity, created), 0)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return cls(final, fd, mm, capacity, identity)

    # -- hot path -------------------------------------------------------------------------------

    def emit(self, kind: int, code: int = 0, a: int = 0, b: int = 0, c: int = 0, tag: int = 0, aux: int = 0) -> int:
        """Write one record; returns its sequence number. Raises struct.error on out-of-range values."""
        n = next(self._seq)
        off = _RECORDS_OFFSET + ((n - 1) & self._mask) * 64
        try:
            self._pack(self._mm, off, n, _time_ns(), self._step32, kind, code, tag, aux, a, b, c, n)
        except Exception:
            # A bad value may have left the slot half-written: seal it as VOID so readers see
            # a whole record, not a hole to wait on. Then let the caller count the failure.
            self._pack(self._mm, off, n, _time_ns(), self._step32, 9, 0, 0, 0, 0, 0, 0, n)
            raise
        return n

    def step(self) -> int:
        """Heartbeat: bump the step counter in the header and write a STEP record (kind 1)."""
        s = next(self._steps)  # atomic under the GIL: threads that step never lose a count
        now = _time_ns()
        last = self._last_step_ns
        self._step = s
        self._last_step_ns = now
        self._step32 = s32 = s & 0xFFFFFFFF
        words = self._words
        words[_LAST_STEP_NS] = now
        words[_STEP] = s
        n = next(self._seq)
        self._pack(self._mm, _RECORDS_OFFSET + ((n - 1) & self._mask) * 64, n, now, s32, 1, 0, 0, 0, s, now - last if last else 0, 0, n)
        if not s & (s - 1) and self.on_milestone is not None:
            self.on_milestone(s)
        return s

    # -- rare path ------------------------------------------------------------------------------

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def dropped(self) -> int:
        return self._dropped

    def note_dropped(self, n: int = 1) -> None:
        """Count records the hooks could not write (shown by the daemon as drops)."""
        self._dropped += n
        self._words[rf.Word.DROPPED] = self._dropped

    def intern(self, name: str) -> int:
        """String-table offset for ``name`` (0 if the table is full). Cached; cheap after first use."""
        tag = self._strings.get(name)
        if tag is not None:
            return tag
        with self._strings_lock:
            tag = self._strings.get(name)
            if tag is not None:
                return tag
            data = name.encode("utf-8", "replace")[:255] + b"\0"
            if self._strings_used + len(data) > rf.STRINGS_SIZE:
                self._strings[name] = 0
                return 0
            tag = self._strings_used
            start = rf.STRINGS_OFFSET + tag
            self._mm[start : start + len(data)] = data
            self._strings_used += len(data)
            self._strings[name] = tag
            self._words[rf.Word.STRINGS_USED] = self._strings_used
            return tag

    def set_idle(self, idle: bool) -> None:
        """Publish whether the engine is idle (``ringformat.Word.IDLE``)."""
        self._words[rf.Word.IDLE] = _time_ns() if idle else 1

    def set_mode(self, mode: str) -> None:
        """Publish the probes' mode (``ringformat.PROBE_MODES``) in the header."""
        self._words[rf.Word.MODE] = rf.PROBE_MODES.index(mode) if mode in rf.PROBE_MODES else 0

    def set_identity(self, **fields: Any) -> None:
        """Update identity fields (rank, framework, ...) once a framework reveals them."""
        check_identity_fields(fields)
        with self._identity_lock:
            self.identity.update({k: v for k, v in fields.items() if v is not None})
            created = rf.HEADER.unpack_from(self._mm, 0)[[n for n, _ in rf.HEADER_FIELDS].index("created_ns")]
            header = rf.pack_header(self.identity, self.capacity, created)
            # A seqlock for readers (ringformat.read_header): odd while the block is rewritten.
            words, gen = self._words, self._words[rf.Word.IDENTITY_GEN]
            words[rf.Word.IDENTITY_GEN] = gen | 1
            self._mm[: len(header)] = header
            words[rf.Word.IDENTITY_GEN] = (gen | 1) + 1

    def close(self, clean_exit: bool = True) -> None:
        """Mark a clean exit (so the daemon can tell it from a crash) and unmap."""
        if self.closed:
            return
        self.closed = True
        try:
            if clean_exit:
                self.emit(rf.Kind.MARK, rf.Mark.EXIT)
                self._words[rf.Word.EXIT_NS] = _time_ns()
            self._words.release()
            self._mm.close()
        finally:
            os.close(self._fd)

    def abandon(self) -> None:
        """In a forked child: drop the parent's mapping and lock fd without touching the file."""
        self.closed = True
        try:
            self._words.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass
        try:
            os.close(self._fd)  # closing our copy of the fd keeps the parent's flock
        except OSError:
            pass
