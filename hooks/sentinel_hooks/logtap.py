"""The log tap: a command's stdout and stderr pass through to the tap's own, and a copy, in whole
lines, goes to ``SENTINEL_DIR/logs/<host>.<pid>.log``, which the daemon follows
(``sentinel/daemon/watchers/logs.py``) to turn a failure line into a fault record. `sentinel run
--log-tap` runs it; so can a serving container that has only the hooks (standard library only):

    python -m sentinel_hooks.logtap [--dir DIR] -- CMD [ARGS...]

The tap is the command's parent: it forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 and
SIGWINCH (the command runs in a process group of its own, so that a terminal's Ctrl-C reaches it once,
through the tap) and exits with the command's status (128 + N for a command killed by signal N).

The tap must never hold the command up. Each of the command's pipes is drained by a reader thread
that only ever reads: what it reads is handed to the sinks (our stdout or stderr, the log file),
each a thread of its own behind a bounded buffer. A sink that cannot keep up (a full pipe, a slow
disk) or has failed (a reader that went away, a full disk) drops what does not fit, and counts the
bytes; the command's writes always succeed. What the tap cannot protect against is its own death:
if `sentinel run` is SIGKILLed, the command's next write to the pipe fails with EPIPE, as for any
piped program.
"""

from __future__ import annotations

import argparse
import collections
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

from . import env as env_vars
from . import layout
from .writer import FsPolicy

__all__ = ["SINK_BUFFER_BYTES", "LOG_MAX_BYTES", "FORWARDED", "Sink", "LogFileSink", "Tap", "run", "main"]

FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")

SINK_BUFFER_BYTES = 4 << 20  # what a sink holds before it drops: seconds of a chatty server's output
LOG_MAX_BYTES = 64 << 20  # the log file is rotated to <name>.1 past this size (one old file kept)
READ_BYTES = 64 << 10
LINGER_S = 0.01  # a sink waits this long after its first piece, to write what came meanwhile in one go
PIPE_BYTES = 1 << 20  # the command's pipes are grown to this (Linux's default cap for a user: /proc/sys/fs/pipe-max-size)
_F_SETPIPE_SZ = 1031
LINE_MAX_BYTES = 64 << 10  # a longer line is cut into pieces of this size


def _write_all(fd: int, view: memoryview) -> None:
    """os.write until all of ``view`` is written. Raises OSError."""
    while view:
        view = view[os.write(fd, view):]


class Sink:
    """A destination written by its own thread from a bounded buffer. ``put`` never blocks: what does
    not fit in ``limit`` bytes is dropped and counted in ``dropped`` (bytes); so is what the write
    failed on. Subclasses define ``write(data)``."""

    def __init__(self, name: str, limit: int = SINK_BUFFER_BYTES) -> None:
        self.limit = limit
        self.dropped = 0
        self.written = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"sentinel-tap-{name}", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._queued + len(data) > self.limit:
                self.dropped += len(data)
                return
            self._queue.append(data)
            self._queued += len(data)
            self._cond.notify()

    def write(self, data: bytes) -> None:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
            if not self._closing:
                time.sleep(LINGER_S)  # a chatty host's lines, written together: far fewer wake-ups and writes
            with self._cond:
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
            try:
                self.write(data)
                self.written += len(data)
            except Exception:  # EPIPE, ENOSPC, EIO: counted; the command goes on
                with self._cond:
                    self.dropped += len(data)

    def close(self, timeout: float) -> None:
        """Write what is buffered, for up to ``timeout`` seconds; what is left then is dropped."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            self.dropped += self._queued
            self._queue.clear()
            self._queued = 0


class FdSink(Sink):
    """One of our own streams (stdout or stderr): the command's output passes through it."""

    def __init__(self, fd: int, name: str, limit: int = SINK_BUFFER_BYTES) -> None:
        self.fd = fd
        self.broken = False
        super().__init__(name, limit)

    def write(self, data: bytes) -> None:
        if self.broken:
            raise BrokenPipeError(errno.EPIPE, "the reader has gone")
        try:
            _write_all(self.fd, memoryview(data))
        except BrokenPipeError:
            self.broken = True  # nobody reads our output any more: drop the rest, never block on it
            raise


class LogFileSink(Sink):
    """The log file the daemon follows: whole lines, appended; rotated past ``max_bytes``. Each put
    is (stream, bytes); a stream's partial last line waits for its end, so that stdout and stderr
    never interleave inside a line."""

    def __init__(self, path: str, max_bytes: int = LOG_MAX_BYTES, policy: FsPolicy | None = None,
                 limit: int = SINK_BUFFER_BYTES) -> None:
        """Raises OSError when ``path`` cannot be created (or is a symlink)."""
        self.path = path
        self.max_bytes = max_bytes
        self.policy = policy or FsPolicy()
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self._partial: dict[str, bytes] = {}
        self._partial_lock = threading.Lock()
        super().__init__("log", limit)

    def _open(self) -> int:
        """Open (create) the log: never through a symlink, never blocking on a FIFO planted at its name
        (O_NONBLOCK: a FIFO with no reader fails at once), a regular file only. Raises OSError."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     self.policy.file_mode)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", self.path)
        try:
            self.policy.own(fd, self.policy.file_mode)  # the daemon may run as another member of the group
        except OSError:
            pass
        return fd

    def put_stream(self, stream: str, data: bytes) -> None:
        """Called by one reader thread per stream: whole lines go on, the tail waits for its end."""
        with self._partial_lock:  # flush_partial may run while a reader that outlived the join still reads
            self._put_stream(stream, data)

    def _put_stream(self, stream: str, data: bytes) -> None:
        data = self._partial.pop(stream, b"") + data
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < LINE_MAX_BYTES:
            self._partial[stream] = data
            return
        if cut == 0:
            cut = len(data)
        elif len(data) - cut >= LINE_MAX_BYTES:
            cut = len(data)
        if data[cut:]:
            self._partial[stream] = data[cut:]
        self.put(data[:cut])

    def flush_partial(self) -> None:
        """At the end: each stream's unfinished last line, with a newline."""
        with self._partial_lock:
            for stream in list(self._partial):
                self.put(self._partial.pop(stream, b"") + b"\n")

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room < len(view):  # what fits, up to a line's end; the rest goes to a fresh file
                cut = bytes(view[:max(room, 0)]).rfind(b"\n") + 1
                if cut == 0 and self._size == 0:  # one line longer than the cap: it goes whole
                    cut = bytes(view[:LINE_MAX_BYTES + 1]).find(b"\n") + 1 or len(view)
                if cut:
                    self._write(view[:cut])
                    view = view[cut:]
                if view:
                    self._rotate()
                continue
            self._write(view)
            break

    def _rotate(self) -> None:
        """The full file to <name>.1, a fresh one in its place. If the fresh one cannot be opened (a full
        disk), writing goes on into the old file's descriptor; a later rotation tries again."""
        try:
            os.replace(self.path, self.path + ".1")
            fd = self._open()
        except OSError:
            self._size = 0  # keep the old descriptor; try again after another max_bytes
            return
        os.close(self._fd)
        self._fd, self._size = fd, 0

    def _write(self, view: memoryview) -> None:
        _write_all(self._fd, view)
        self._size += len(view)

    def close(self, timeout: float) -> None:
        super().close(timeout)
        try:
            os.close(self._fd)
        except OSError:
            pass


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _grow_pipe(fd: int) -> int:
    """Grow the pipe ``fd`` belongs to to PIPE_BYTES where the kernel allows; returns its size in bytes."""
    import fcntl

    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # above the user's cap, or not Linux: the size it has
        try:
            return fcntl.fcntl(fd, 1032)  # F_GETPIPE_SZ
        except OSError:
            return 64 << 10


class Tap:
    """Drain a command's stdout and stderr pipes (``out_fd``, ``err_fd``, read ends) into our own
    stdout and stderr and, when ``log`` is given, into that log file."""

    def __init__(self, out_fd: int, err_fd: int, log: LogFileSink | None,
                 stdout_fd: int = 1, stderr_fd: int = 2, limit: int = SINK_BUFFER_BYTES) -> None:
        self.log = log
        # A reader that has just drained a pipe waits a little before reading again, so that a chatty
        # host's lines come in one read rather than one wake-up each. It waits only as long as the
        # pipe's room lasts at 100 MB/s: 10 ms for a pipe of 1 MiB, 0.5 ms for Linux's default 64 KiB.
        self.linger = min(_grow_pipe(out_fd), _grow_pipe(err_fd)) / 100e6
        self.sinks = {"stdout": FdSink(stdout_fd, "stdout", limit), "stderr": FdSink(stderr_fd, "stderr", limit)}
        self._readers = [threading.Thread(target=self._drain, args=(fd, name), name=f"sentinel-tap-read-{name}",
                                          daemon=True) for fd, name in ((out_fd, "stdout"), (err_fd, "stderr"))]
        for t in self._readers:
            t.start()

    def _drain(self, fd: int, stream: str) -> None:
        sink = self.sinks[stream]
        while True:
            try:
                data = os.read(fd, READ_BYTES)
            except InterruptedError:
                continue
            except OSError:
                break
            if not data:
                break
            if len(data) < READ_BYTES:
                time.sleep(self.linger)
            sink.put(data)
            if self.log is not None:
                self.log.put_stream(stream, data)
        os.close(fd)

    def close(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` seconds for the pipes to end (the command's children may hold them
        open after it exits), then for the sinks to write what they hold."""
        for t in self._readers:
            t.join(timeout)
        if self.log is not None:
            self.log.flush_partial()
            self.log.close(timeout)
        for sink in self.sinks.values():
            sink.close(timeout)

    @property
    def dropped(self) -> dict[str, int]:
        """Bytes dropped per sink: stdout, stderr, and log."""
        out = {name: s.dropped for name, s in self.sinks.items()}
        if self.log is not None:
            out["log"] = self.log.dropped
        return out


def run(argv: list[str], environ: dict[str, str], base_dir: str) -> int:
    """Run ``argv`` (its first item found on PATH) as our child with its output tapped into
    ``base_dir``/logs/; returns its exit status (128 + N for a command killed by signal N). Raises
    OSError when the command cannot be started."""
    exe = shutil.which(argv[0], path=environ.get("PATH")) or argv[0]
    # With a terminal on stdin the command stays in our process group, the terminal's foreground one (in
    # a group of its own it would be stopped by SIGTTIN at its first read): the terminal's Ctrl-C and
    # Ctrl-\ reach it directly, and we ignore them. Otherwise (a container, a pipe) it gets a group of
    # its own and every signal through us, once.
    interactive = _isatty(0)
    proc = subprocess.Popen([exe, *argv[1:]], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            process_group=None if interactive else 0)

    def forward(sig: int, _frame: object) -> None:
        try:
            proc.send_signal(sig)
        except OSError:  # it has exited already
            pass

    for name in FORWARDED:
        terminal_sent = interactive and name in ("SIGINT", "SIGQUIT", "SIGWINCH")
        signal.signal(getattr(signal, name), signal.SIG_IGN if terminal_sent else forward)
    log = None
    try:
        policy = FsPolicy.from_env(environ)
        base = os.path.abspath(base_dir)
        policy.make_dirs(layout.logs_dir(base))
        host = env_vars.read(env_vars.HOST, environ) or socket.gethostname()
        log = LogFileSink(layout.tap_log_path(base, host, proc.pid), policy=policy)
    except (OSError, ValueError) as exc:  # the output still passes through; only the daemon's copy is missing
        print(f"sentinel: no log tap for {argv[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
    tap = Tap(proc.stdout.fileno(), proc.stderr.fileno(), log)
    rc = proc.wait()
    try:
        tap.close()
    except Exception:  # the command's status matters more than our bookkeeping
        pass
    lost = {k: v for k, v in tap.dropped.items() if v}
    if lost:
        print("sentinel: the log tap dropped " + ", ".join(f"{v} bytes of {k}" for k, v in lost.items())
              + " (its reader or disk could not keep up)", file=sys.stderr)
    return 128 - rc if rc < 0 else rc


def main(argv: list[str] | None = None) -> int:
    """``python -m sentinel_hooks.logtap [--dir DIR] -- CMD [ARGS...]``: exit status as ``run``'s, 2
    for bad usage, 127 for a command not found, 126 for one that cannot run."""
    p = argparse.ArgumentParser(prog="python -m sentinel_hooks.logtap",
                                description="Run a command with its output passed through and copied to "
                                            "SENTINEL_DIR/logs/ for the Sentinel daemon.")
    p.add_argument("--dir", default=None, help="SENTINEL_DIR (default: $SENTINEL_DIR, else a per-user folder)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("give a command after --")
    if shutil.which(cmd[0]) is None:
        print(f"sentinel: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    try:
        return run(cmd, dict(os.environ), args.dir or layout.default_dir())
    except OSError as exc:
        print(f"sentinel: cannot run {cmd[0]}: {exc}", file=sys.stderr)
        return 126


if __name__ == "__main__":
    sys.exit(main())
