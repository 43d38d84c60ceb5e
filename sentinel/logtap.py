"""The log tap of `sentinel run --log-tap`: the command's stdout and stderr pass through to
`sentinel run`'s own, and a copy, in whole lines, goes to ``SENTINEL_DIR/logs/<host>.<pid>.log``,
which the daemon follows (``daemon/watchers/logs.py``) to turn a failure line into a fault record.

The tap must never hold the command up. Each of the command's pipes is drained by a reader thread
that only ever reads: what it reads is handed to the sinks (our stdout or stderr, the log file),
each a thread of its own behind a bounded buffer. A sink that cannot keep up (a full pipe, a slow
disk) or has failed (a reader that went away, a full disk) drops what does not fit, and counts the
bytes; the command's writes always succeed. What the tap cannot protect against is its own death:
if `sentinel run` is SIGKILLed, the command's next write to the pipe fails with EPIPE, as for any
piped program.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import time

from sentinel_hooks.writer import FsPolicy

__all__ = ["SINK_BUFFER_BYTES", "LOG_MAX_BYTES", "Sink", "LogFileSink", "Tap"]

SINK_BUFFER_BYTES = 4 << 20  # what a sink holds before it drops: seconds of a chatty server's output
LOG_MAX_BYTES = 64 << 20  # the log file is rotated to <name>.1 past this size (one old file kept)
READ_BYTES = 64 << 10
LINGER_S = 0.01  # a sink waits this long after its first piece, to write what came meanwhile in one go
LINE_MAX_BYTES = 64 << 10  # a longer line is cut into pieces of this size


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
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BrokenPipeError:
                self.broken = True  # nobody reads our output any more: drop the rest, never block on it
                raise
            view = view[n:]


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
        super().__init__("log", limit)

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.policy.file_mode)
        try:
            self.policy.own(fd, self.policy.file_mode)  # the daemon may run as another member of the group
        except OSError:
            pass
        return fd

    def put_stream(self, stream: str, data: bytes) -> None:
        """Called by one reader thread per stream: whole lines go on, the tail waits for its end."""
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
        for stream in list(self._partial):
            self.put(self._partial.pop(stream) + b"\n")

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
                    os.close(self._fd)
                    os.replace(self.path, self.path + ".1")
                    self._fd = self._open()
                    self._size = 0
                continue
            self._write(view)
            break

    def _write(self, view: memoryview) -> None:
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]

    def close(self, timeout: float) -> None:
        super().close(timeout)
        try:
            os.close(self._fd)
        except OSError:
            pass


class Tap:
    """Drain a command's stdout and stderr pipes (``out_fd``, ``err_fd``, read ends) into our own
    stdout and stderr and, when ``log`` is given, into that log file."""

    def __init__(self, out_fd: int, err_fd: int, log: LogFileSink | None,
                 stdout_fd: int = 1, stderr_fd: int = 2, limit: int = SINK_BUFFER_BYTES) -> None:
        self.log = log
        self.sinks = {"stdout": FdSink(stdout_fd, "stdout", limit), "stderr": FdSink(stderr_fd, "stderr", limit)}
        self.read_bytes = 0
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
            self.read_bytes += len(data)
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
