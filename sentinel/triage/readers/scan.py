"""The lines of a large text that can matter to a reader, found without a Python loop per line.

A serving log of a gigabyte is mostly request and throughput lines. Each reader names the byte
strings a line it reads must contain (``KEYS``); ``relevant_lines`` reads the file in chunks and
finds those strings with ``bytes.find`` (memchr-speed), so only the few lines around them are
decoded and handed to the reader's per-line parser. Memory stays at one chunk, whatever the file's
size.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["CHUNK_BYTES", "relevant_lines"]

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
        for start in _line_starts(body, keys):
            end = body.find(b"\n", start)
            yield body[start: end if end >= 0 else len(body)].decode("utf-8", "replace")
    if tail:
        for start in _line_starts(tail, keys):
            end = tail.find(b"\n", start)
            yield tail[start: end if end >= 0 else len(tail)].decode("utf-8", "replace")
