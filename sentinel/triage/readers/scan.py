"""The lines of a large text that can matter to a reader, found without a Python loop per line.

A serving log of a gigabyte is mostly request and throughput lines. Each reader names the byte
strings a line it reads must contain (``KEYS``); ``relevant_lines`` reads the file in chunks and
finds those strings with ``bytes.find`` (memchr-speed), so only the few lines around them are
decoded and handed to the reader's per-line parser. Memory stays at one chunk, whatever the file's
size. ``relevant_lines_of`` scans a file's spans in parallel processes, one per CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["CHUNK_BYTES", "relevant_lines", "relevant_lines_of"]

CHUNK_BYTES = 16 << 20


def _line_starts(chunk: bytes, keys: tuple[bytes, ...]) -> list[int]:
    """Start offsets of the lines of ``chunk`` that hold one of ``keys``, in order, once each."""
    starts = set()
    for key in keys:
        at = chunk.find(key)
        while at >= 0:
            start = chunk.rfind(b"\n", 0, at) + 1
            starts.add(start)
            end = chunk.find(b"\n", at)
            if end < 0:
                break
            at = chunk.find(key, end)  # the next line that holds it: one hit per line is enough
    return sorted(starts)


def _key_lines(data: bytes, keys: tuple[bytes, ...]) -> list[str]:
    """The lines of ``data`` that hold one of ``keys``, decoded, without their newline."""
    out = []
    for start in _line_starts(data, keys):
        end = data.find(b"\n", start)
        out.append(data[start: end if end >= 0 else len(data)].decode("utf-8", "replace"))
    return out


def relevant_lines(f: BinaryIO, keys: tuple[bytes, ...], chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The lines of the binary file ``f`` that contain one of ``keys``, decoded (UTF-8, errors
    replaced), without their newline, in file order. A line longer than a chunk is cut at the chunk's
    end."""
    tail = b""
    while True:
        data = f.read(chunk_bytes)
        if not data:
            break
        chunk = tail + data
        cut = chunk.rfind(b"\n") + 1
        if cut == 0 and len(chunk) < chunk_bytes * 2:
            tail = chunk
            continue
        if cut == 0:
            cut = len(chunk)
        body, tail = chunk[:cut], chunk[cut:]
        yield from _key_lines(body, keys)
    if tail:
        yield from _key_lines(tail, keys)


def _skip_line(f: BinaryIO) -> None:
    """Read past the end of the line ``f`` is in, a chunk at a time (bounded memory)."""
    while True:
        part = f.readline(CHUNK_BYTES)
        if not part or part.endswith(b"\n"):
            return


def _span_lines(path: str, start: int, end: int, keys: tuple[bytes, ...]) -> list[str]:
    """The key lines of the lines that start in [start, end) of ``path`` (a worker's share)."""
    with open(path, "rb") as f:
        if start:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # mid-line: that line belongs to the span before
                _skip_line(f)
        out: list[str] = []
        pos = f.tell()
        while pos < end:
            data = f.read(min(CHUNK_BYTES, end - pos))
            if not data:
                break
            pos += len(data)
            if not data.endswith(b"\n"):  # finish the line that crosses the span's end (or the chunk's)
                rest = f.readline(CHUNK_BYTES)  # a line longer than that is cut, as relevant_lines does
                data += rest
                pos += len(rest)
            out += _key_lines(data, keys)
        return out


def relevant_lines_of(path: str, keys: tuple[bytes, ...], workers: int | None = None,
                      span_bytes: int = 4 * CHUNK_BYTES) -> list[str]:
    """``relevant_lines`` of the file at ``path``, its spans scanned by ``workers`` processes (default:
    the CPUs this process may use) and joined in file order. Falls back to one process when a pool
    cannot start."""
    import concurrent.futures
    import os

    size = os.path.getsize(path)
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spans = [(s, min(s + span_bytes, size)) for s in range(0, size, span_bytes)] or [(0, 0)]
    if workers <= 1 or len(spans) == 1:
        return [ln for s, e in spans for ln in _span_lines(path, s, e, keys)]
    import multiprocessing

    try:
        # fork: `sentinel triage` is one thread (spawn or forkserver would import the CLI's __main__ again)
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(spans)), mp_context=context) as pool:
            parts = list(pool.map(_span_lines, [path] * len(spans), [s for s, _ in spans], [e for _, e in spans],
                                  [keys] * len(spans)))
    except (OSError, RuntimeError, ValueError):  # no process pool here (a sandbox without fork or semaphores)
        parts = [_span_lines(path, s, e, keys) for s, e in spans]
    return [ln for part in parts for ln in part]
