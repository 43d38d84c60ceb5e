"""The ring file format: the one definition shared by the hooks (writer) and the daemon (reader).

Standard library only, so it loads inside any serving process and inside the torch-free daemon.

Layout of a ring file (little endian, no padding)::

    [0, HEADER_SIZE)            header: magic, version, geometry, identity; at WORDS_OFFSET the
                                mutable words (heartbeat, counters, identity generation); at
                                DEVICE_WORDS_OFFSET the device words (written by the GPU)
    [STRINGS_OFFSET, +STRINGS_SIZE)  string table: NUL-separated names, appended, for record tags
    [RECORDS_OFFSET, +capacity * RECORD_SIZE)  the record slots

Record ``n`` (1-based, ever increasing) lives in slot ``(n - 1) % capacity``. The writer packs a
record with one ``struct.pack_into`` call, which zeroes the slot and then stores the fields in
order: ``seq`` first, ``seq_end`` last. A reader accepts a slot only if ``seq_end`` already read
``n`` before it copied the slot, ``seq == seq_end == n`` in the copy, and ``seq`` still reads ``n``
after the copy (a seqlock). So a record torn by SIGKILL, being written while it is read, or being
overwritten while it is read, is never taken as valid. The header's mutable words have no such
check, so each is written and read as one aligned 8-byte access instead (see ``Word``).
"""

from __future__ import annotations

import enum
import struct
import sys
from typing import Any

__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "DEVICE_WORDS_OFFSET", "DEVICE_WORDS", "DeviceWord", "PROBE_WORDS", "device_words",
    "pack_device_word_info", "unpack_device_word_info", "STRINGS_OFFSET", "STRINGS_SIZE", "RECORDS_OFFSET", "RING_SUFFIX",
    "DEFAULT_CAPACITY", "MAX_CAPACITY", "Kind", "Mark", "Check", "Context", "COLLECTIVE_OPS",
    "COLLECTIVE_OP_NAMES", "COLLECTIVE_DTYPES", "COLLECTIVE_DTYPE_NAMES", "ADAPTER_ERROR_EVENT", "CONFIG_ERROR_EVENT", "CONTAINED_EVENT", "BATCH_AT_BUDGET",
    "BATCH_OVER_BUDGET", "BATCH_GRAPH_HIT", "BATCH_GRAPH_KNOWN", "KIND_NAMES", "CHECK_LABELS", "kind_name",
    "PAYLOAD_NAMES", "RECORD_FIELDS", "RECORD", "RECORD_SIZE", "HEADER_FIELDS", "HEADER", "WORDS_OFFSET", "Word",
    "PROBE_MODES", "WORD_NAMES", "WORDS_SIZE", "IDENTITY_READ_TRIES", "IDENTITY_TEXT", "IDENTITY_INT",
    "RingFormatError", "file_size", "pack_header", "unpack_header", "header_words", "read_header", "numpy_dtype",
    "read_string",
]

MAGIC = b"SNTLRING"
VERSION = 1

HEADER_SIZE = 4096
STRINGS_OFFSET = HEADER_SIZE
STRINGS_SIZE = 12288
RECORDS_OFFSET = STRINGS_OFFSET + STRINGS_SIZE
RING_SUFFIX = ".ring"
DEFAULT_CAPACITY = 1 << 16  # 64Ki slots x 64 B = 4 MiB per process, touched only as written
MAX_CAPACITY = 1 << 26  # 4 GiB of records: more is refused by readers as a corrupt header


class Kind(enum.IntEnum):
    """What a record is. Later hooks add kinds; readers count kinds they do not know."""

    STEP = 1  # a = step number, b = ns since the previous step
    EVENT = 2  # a user event: code, a, b, c are the caller's
    PROBE = 3  # an invariant probe result (code = check id)
    CONTEXT = 4  # shape context of a step (code = context id)
    COLLECTIVE_ENQUEUE = 5
    COLLECTIVE_COMPLETE = 6
    EXCEPTION = 7
    MARK = 8  # a lifecycle mark (code = Mark)
    VOID = 9  # a hook call failed after taking this slot: no payload, but no hole either


class Mark(enum.IntEnum):
    """MARK records' ``code``: START when a process opens its ring, EXIT when it closes it at a clean
    exit."""

    START = 1
    EXIT = 2


class DeviceWord(enum.IntEnum):
    """What a device word counts (the low byte of its info word; see DEVICE_WORDS_OFFSET)."""

    COLLECTIVE_ENTERED = 1  # collectives of the group (tag "pg:<name>") the GPU's stream has reached
    # A paged-KV probe site's summary on one device (tag "probe:<device index>:<site>"), four words in
    # a row (PROBE_WORDS), rewritten by each probe kernel's last program to finish, so they outlive a
    # fault in the step's next kernel (device.py, kernels._paged_kv_probe). Values as int64.
    PROBE_CALLS = 2  # probe executions the GPU has run (eager calls and graph replays)
    PROBE_OOB = 3  # page-table entries outside [0, num_pages) they found where the kernel reads
    PROBE_OFFENDING = 4  # the offending index so far: the largest past the end, else the most negative (-1: none)
    PROBE_NUM_PAGES = 5  # the num_pages the latest call checked against


# A probe site's block of device words, in this order.
PROBE_WORDS = (DeviceWord.PROBE_CALLS, DeviceWord.PROBE_OOB, DeviceWord.PROBE_OFFENDING, DeviceWord.PROBE_NUM_PAGES)


class Check(enum.IntEnum):
    """Invariant checks (PROBE records' ``code``). Names are the metric/doc labels."""

    PAGE_TABLE_OOB = 1  # a: violations, b: offending index, c: num_pages
    PAGE_TABLE_TRAILING_OOB = 2  # same, for entries past a row's valid prefix
    BATCH_MISMATCH = 3  # a: 1, b: batch_size, c: the disagreeing dimension
    SEQLENS_INVALID = 4  # a: violations, b: the first offending length (-1 from the GPU path), c: limit
    CAPACITY_MISMATCH = 5  # a: 1, b: allocator capacity, c: buffer capacity
    DEGENERATE_STRIDE = 6  # a: 1, b: dim, c: observed stride; aux: canonical stride
    TMA_MISALIGNED = 7  # a: 1, b: dim (-1: base pointer), c: stride bytes (or pointer % 16)

    @property
    def label(self) -> str:
        return self.name.lower()


class Context(enum.IntEnum):
    """Context records (CONTEXT records' ``code``): what a step looked like, not a violation."""

    PAGED_KV = 1  # a: highest page index the latest call read (-1: none), b: num_pages, c: calls covered, aux: rows
    BATCH = 2  # a: num_tokens, b: token budget (-1: none), c: flags (BATCH_*), aux: batch size


# COLLECTIVE_ENQUEUE / COLLECTIVE_COMPLETE records' ``code``: the op. Code 0 on an ENQUEUE record
# describes the group (a = size, b = rank in group, c = global rank).
COLLECTIVE_OPS = {
    "all_reduce": 1, "all_gather": 2, "all_gather_into_tensor": 3, "reduce_scatter": 4,
    "reduce_scatter_tensor": 5, "broadcast": 6, "all_to_all": 7, "all_to_all_single": 8, "barrier": 9,
    "send": 10, "recv": 11, "isend": 12, "irecv": 13, "reduce": 14, "gather": 15, "scatter": 16,
    "all_gather_single": 17, "reduce_scatter_single": 18,  # torch 2.13's names (the older two delegate to them)
}
COLLECTIVE_OP_NAMES = {code: name for name, code in COLLECTIVE_OPS.items()}
# COLLECTIVE_ENQUEUE records' ``aux``: the first tensor's dtype (0: none, or one not listed here).
COLLECTIVE_DTYPES = {
    "torch.float32": 1, "torch.float16": 2, "torch.bfloat16": 3, "torch.float64": 4, "torch.int64": 5,
    "torch.int32": 6, "torch.int8": 7, "torch.uint8": 8, "torch.bool": 9, "torch.float8_e4m3fn": 10,
    "torch.float8_e5m2": 11,
}
COLLECTIVE_DTYPE_NAMES = {code: name.removeprefix("torch.") for name, code in COLLECTIVE_DTYPES.items()}

# EVENT records' ``code`` values that Sentinel itself writes (user events use any other code).
ADAPTER_ERROR_EVENT = 0xFA11  # a framework adapter failed and switched off; a = 1, tag = "adapter:<name>"
CONFIG_ERROR_EVENT = 0xC0F1  # bad values in the hooks' environment config (defaults used); a = how many
CONTAINED_EVENT = 0xC047  # contain mode redirected page-table entries to the reserved page; a = how many, tag = site

BATCH_AT_BUDGET = 1  # num_tokens == token budget: a boundary step (seed 003)
BATCH_OVER_BUDGET = 2
BATCH_GRAPH_HIT = 4  # the batch size is one the engine captured a graph for
BATCH_GRAPH_KNOWN = 8  # graph sizes were given, so GRAPH_HIT is meaningful


KIND_NAMES = {int(k): k.name.lower() for k in Kind}  # the names metrics and logs give record kinds
CHECK_LABELS = {int(c): c.label for c in Check}  # check code -> its label (Check.label)


def kind_name(kind: int) -> str:
    """A record kind's name ("probe", "step", ...); "unknown" for a code this version does not know."""
    return KIND_NAMES.get(kind, "unknown")


# What a record's payload (a, b, c, aux) means, by kind (and code, where the code changes it): the
# names the reader's API gives those columns (``numpy_dtype(kind, code)``). A name left out keeps
# its letter. User EVENT records keep a, b, c: they are the caller's.
PAYLOAD_NAMES: dict[tuple[int, int | None], dict[str, str]] = {
    (Kind.STEP, None): {"a": "step_number", "b": "duration_ns"},  # duration since the previous step (0: first)
    (Kind.EVENT, ADAPTER_ERROR_EVENT): {"a": "count"},
    (Kind.EVENT, CONFIG_ERROR_EVENT): {"a": "count"},
    (Kind.EVENT, CONTAINED_EVENT): {"a": "count"},
    # a: violations, b: the offending value (index, length, dim), c: the limit, aux: detail (see Check)
    (Kind.PROBE, None): {"a": "count", "b": "value", "c": "limit", "aux": "detail"},
    (Kind.CONTEXT, Context.PAGED_KV): {"a": "max_index", "b": "num_pages", "c": "calls", "aux": "rows"},
    (Kind.CONTEXT, Context.BATCH): {"a": "num_tokens", "b": "token_budget", "c": "flags", "aux": "batch_size"},
    (Kind.COLLECTIVE_ENQUEUE, 0): {"a": "group_size", "b": "group_rank", "c": "global_rank"},  # the group
    (Kind.COLLECTIVE_ENQUEUE, None): {"a": "collective_seq", "b": "numel", "c": "group_rank", "aux": "dtype"},
    (Kind.COLLECTIVE_COMPLETE, None): {"a": "collective_seq", "b": "duration_ns", "c": "group_rank"},
    (Kind.EXCEPTION, None): {"tag": "text", "aux": "frame"},  # string-table tags
}


# Record fields, in the order they are written. One list, two views: struct (writer) and
# numpy (reader).
RECORD_FIELDS: tuple[tuple[str, str], ...] = (
    ("seq", "Q"),  # commit marker, written first
    ("ts_ns", "Q"),  # wall clock, time.time_ns()
    ("step", "I"),  # the writer's step counter when the record was written (mod 2**32)
    ("kind", "H"),
    ("code", "H"),
    ("tag", "I"),  # string-table offset of a name, 0 = none
    ("aux", "I"),
    ("a", "q"),
    ("b", "q"),
    ("c", "q"),
    ("seq_end", "Q"),  # commit marker, written last
)
RECORD = struct.Struct("<" + "".join(code for _, code in RECORD_FIELDS))
RECORD_SIZE = RECORD.size
assert RECORD_SIZE == 64, RECORD_SIZE

# Header fields. Identity is written once at creation (and may be rewritten when a framework
# later tells us its rank); the heartbeat and counters are updated in place.
HEADER_FIELDS: tuple[tuple[str, str], ...] = (
    ("magic", "8s"),
    ("version", "H"),
    ("header_size", "H"),
    ("record_size", "H"),
    ("_pad0", "H"),
    ("capacity", "I"),
    ("strings_offset", "I"),
    ("strings_size", "I"),
    ("records_offset", "I"),
    ("pid", "I"),
    ("rank", "i"),
    ("local_rank", "i"),
    ("world_size", "i"),
    ("created_ns", "Q"),
    ("job", "64s"),
    ("host", "64s"),
    ("pod", "64s"),
    ("namespace", "64s"),
    ("framework", "32s"),
    ("framework_version", "32s"),
    ("tp_rank", "i"),
    ("dp_rank", "i"),
    ("pp_rank", "i"),
    ("ppid", "i"),  # the writer's parent (0 in rings written before it was recorded): links a crash's consequences
)
HEADER = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS))

# The mutable words after the identity block: unsigned 64-bit little-endian integers at 8-byte
# aligned offsets, updated in place while readers poll them. ``struct.pack_into`` is no good here:
# CPython zeroes its target before packing byte by byte, so a reader polling a word it rewrites saw
# 0 for ``step`` in 4,380 of 9.17 M reads. Each word is written with one aligned 8-byte store and
# read with one aligned 8-byte load (a memoryview of format "Q", see :func:`header_words`), which
# x86-64 and AArch64 perform atomically: every value read is one the writer wrote. Words are
# independent of each other (``step`` and ``last_step_ns`` may be one step apart); the identity
# block is guarded by IDENTITY_GEN instead (see :func:`read_header`).
WORDS_OFFSET = 1024
assert HEADER.size <= WORDS_OFFSET


class Word(enum.IntEnum):
    """Index of each mutable header word: word ``i`` is at ``WORDS_OFFSET + 8 * i``."""

    STEP = 0  # heartbeat: the writer's step counter
    LAST_STEP_NS = 1  # heartbeat: time.time_ns() of the last step
    DROPPED = 2  # hook calls that became counted no-ops
    STRINGS_USED = 3  # bytes of the string table in use
    EXIT_NS = 4  # time.time_ns() of a clean exit, 0 while running or after a crash
    # Even while the identity block is stable, odd while the writer rewrites it. Rings written
    # before this word existed have 0 here: stable.
    IDENTITY_GEN = 5
    MODE = 6  # the probes' mode (PROBE_MODES index; 0: not configured yet, or an older ring)
    # Whether the engine has work, for processes whose adapter can tell (vLLM's engine core, SGLang's
    # scheduler): 0 does not report it, 1 busy, else time.time_ns() since it has been idle. An idle
    # engine does not step, and its heartbeat ages without anything being stuck.
    IDLE = 7


# Values of Word.MODE: the probes' SENTINEL_MODE.
PROBE_MODES = ("", "observe", "trap", "contain")


WORD_NAMES = tuple(w.name.lower() for w in Word)
WORDS_SIZE = 8 * len(Word)
IDENTITY_READ_TRIES = 1000  # a rewrite takes microseconds; a writer killed inside one leaves GEN odd

# The device words: DEVICE_WORDS unsigned 64-bit counters from DEVICE_WORDS_OFFSET, written by the
# GPU through a host mapping of the ring file's first page (the hooks' ``mapped`` module registers
# it with CUDA), so they sit in the page cache, outside the process: a hung GPU, a dead CUDA context
# or a SIGKILL leaves them readable, and reading them needs no CUDA call. Then DEVICE_WORDS info
# words, written by the host once, before the GPU first writes the counter: what counter ``i``
# counts (``pack_device_word_info``; 0: unassigned). Each is one aligned 8-byte store or load.
DEVICE_WORDS_OFFSET = 2048
DEVICE_WORDS = (HEADER_SIZE - DEVICE_WORDS_OFFSET) // 16
assert WORDS_OFFSET + WORDS_SIZE <= DEVICE_WORDS_OFFSET


def pack_device_word_info(meaning: int, tag: int) -> int:
    """The info word of a device counter: ``meaning`` (a DeviceWord) in the low byte, the string
    table offset ``tag`` of what it counts ("pg:<group>") above it."""
    return int(meaning) | int(tag) << 8


def unpack_device_word_info(info: int) -> tuple[int, int]:
    """(meaning, tag) of an info word; (0, 0) for an unassigned counter."""
    return info & 0xFF, (info >> 8) & 0xFFFFFFFF


IDENTITY_TEXT = ("job", "host", "pod", "namespace", "framework", "framework_version")
IDENTITY_INT = ("pid", "rank", "local_rank", "world_size", "tp_rank", "dp_rank", "pp_rank", "ppid")


class RingFormatError(ValueError):
    """A ring file that is not ours, or not this version. ``reason`` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def file_size(capacity: int) -> int:
    """Bytes in a ring file of ``capacity`` slots: header and string table (RECORDS_OFFSET), then
    RECORD_SIZE (64) bytes per slot."""
    return RECORDS_OFFSET + capacity * RECORD_SIZE


def pack_header(identity: dict[str, Any], capacity: int, created_ns: int) -> bytes:
    """The header block for a new ring (identity values default to empty / -1)."""
    if capacity <= 0 or capacity & (capacity - 1):
        raise ValueError("capacity must be a power of two")
    values = []
    fixed = {
        "magic": MAGIC,
        "version": VERSION,
        "header_size": HEADER_SIZE,
        "record_size": RECORD_SIZE,
        "capacity": capacity,
        "strings_offset": STRINGS_OFFSET,
        "strings_size": STRINGS_SIZE,
        "records_offset": RECORDS_OFFSET,
        "created_ns": created_ns,
    }
    for name, code in HEADER_FIELDS:
        if name in fixed:
            values.append(fixed[name])
        elif name in IDENTITY_TEXT:
            width = int(code[:-1])
            values.append(str(identity.get(name) or "").encode("utf-8", "replace")[:width])
        elif name in IDENTITY_INT:
            v = identity.get(name)
            values.append(-1 if v is None else int(v))
        else:
            values.append(0)
    return HEADER.pack(*values)


def unpack_header(buf: bytes | memoryview) -> dict[str, Any]:
    """Parse and validate a header from a private copy (``os.pread``, a fuzzer's bytes). Raises
    RingFormatError with a reason label. For the live mapping of a ring, use :func:`read_header`."""
    if len(buf) < HEADER_SIZE:
        raise RingFormatError("truncated", f"header is {len(buf)} bytes, need {HEADER_SIZE}")
    h = _unpack_identity(buf)
    h.update(zip(WORD_NAMES, struct.unpack_from(f"<{len(Word)}Q", buf, WORDS_OFFSET)))
    return h


def _unpack_identity(buf: bytes | memoryview) -> dict[str, Any]:
    raw = HEADER.unpack_from(buf, 0)
    h = {name: value for (name, _), value in zip(HEADER_FIELDS, raw) if not name.startswith("_")}
    if h["magic"] != MAGIC:
        raise RingFormatError("bad_magic", f"magic is {h['magic']!r}, expected {MAGIC!r}")
    if h["version"] != VERSION:
        raise RingFormatError("bad_version", f"format version {h['version']}, this reader knows {VERSION}")
    cap = h["capacity"]
    if (
        h["header_size"] != HEADER_SIZE
        or h["record_size"] != RECORD_SIZE
        or h["strings_offset"] != STRINGS_OFFSET
        or h["strings_size"] != STRINGS_SIZE
        or h["records_offset"] != RECORDS_OFFSET
        or cap <= 0
        or cap & (cap - 1)
        or cap > MAX_CAPACITY
    ):
        raise RingFormatError("bad_geometry", "header geometry does not match this format version")
    for name in IDENTITY_TEXT:
        h[name] = h[name].split(b"\0", 1)[0].decode("utf-8", "replace")
    return h


def header_words(mapping: Any) -> Any:
    """The mutable header words of a mapped ring, indexable by :class:`Word`: each item is read or
    written as one aligned 8-byte access.

    ``mapping`` is the ring's mmap (writable for the writer, read-only for a reader). The result is
    a memoryview of format "Q"; call its ``release()`` before closing the mapping, which it pins.
    On a big-endian host (no serving platform is one) it is a ``struct``-backed stand-in that keeps
    the file little endian but loses the single-access guarantee."""
    if sys.byteorder == "little":
        return memoryview(mapping)[WORDS_OFFSET : WORDS_OFFSET + WORDS_SIZE].cast("Q")
    return _PackedWords(mapping)


class _PackedWords:
    def __init__(self, mapping: Any, offset: int = WORDS_OFFSET) -> None:
        self._buf = mapping
        self._offset = offset

    def __getitem__(self, word: int) -> int:
        return struct.unpack_from("<Q", self._buf, self._offset + 8 * word)[0]

    def __setitem__(self, word: int, value: int) -> None:
        struct.pack_into("<Q", self._buf, self._offset + 8 * word, value)

    def release(self) -> None:
        self._buf = None


def device_words(mapping: Any) -> Any:
    """The device words of a mapped ring (see DEVICE_WORDS_OFFSET): counter ``i`` at index ``i``, its
    info word at ``DEVICE_WORDS + i``, each read or written as one aligned 8-byte access. Like
    :func:`header_words`: a memoryview of format "Q" on a little-endian host; ``release()`` it
    before closing the mapping."""
    if sys.byteorder == "little":
        return memoryview(mapping)[DEVICE_WORDS_OFFSET:HEADER_SIZE].cast("Q")
    return _PackedWords(mapping, DEVICE_WORDS_OFFSET)


def read_header(mapping: Any, words: Any, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The header of a live ring: what :func:`unpack_header` gives, read without tearing.

    The identity block is copied while IDENTITY_GEN reads the same even value before and after
    (a seqlock; the writer makes it odd while it rewrites the block). If that never happens in
    IDENTITY_READ_TRIES copies (a writer killed inside a rewrite), ``previous``'s identity is
    kept, or, with none, the last copy is taken as it is. Each mutable word is then read once, with
    one 8-byte load. ``words`` is :func:`header_words` of ``mapping``. Raises RingFormatError with a
    reason label.

    The seqlock relies on the writer's stores becoming visible in program order, which x86-64
    guarantees; on a weaker memory model a concurrent identity rewrite (once or twice in a
    process's life) could, rarely, be read half done. The words themselves are exact everywhere."""
    identity = None
    for _ in range(IDENTITY_READ_TRIES):
        gen = words[Word.IDENTITY_GEN]
        block = bytes(mapping[: HEADER.size])
        if not gen & 1 and words[Word.IDENTITY_GEN] == gen:
            identity = _unpack_identity(block)
            break
    if identity is None:
        identity = dict(previous) if previous is not None else _unpack_identity(block)
    for i, name in enumerate(WORD_NAMES):
        identity[name] = words[i]
    return identity


def numpy_dtype(kind: int | None = None, code: int | None = None) -> Any:
    """The record layout as a numpy structured dtype (readers only; numpy is imported lazily). With
    ``kind`` (and ``code``), the payload columns carry their names for that kind (PAYLOAD_NAMES):
    a view of records of that kind through it reads ``probes["count"]``, not ``probes["a"]``."""
    import numpy as np

    names = (PAYLOAD_NAMES.get((kind, code)) or PAYLOAD_NAMES.get((kind, None)) or {}) if kind is not None else {}
    return np.dtype([(names.get(name, name), _NP_CODES[fmt]) for name, fmt in RECORD_FIELDS])


_NP_CODES = {"Q": "<u8", "q": "<i8", "I": "<u4", "i": "<i4", "H": "<u2"}


def read_string(buf: bytes | memoryview, tag: int) -> str:
    """The name stored at string-table offset ``tag`` (0 means no name)."""
    if tag <= 0 or tag >= STRINGS_SIZE:
        return ""
    start = STRINGS_OFFSET + tag
    end = bytes(buf[start : STRINGS_OFFSET + STRINGS_SIZE]).find(b"\0")
    if end < 0:
        return ""
    return bytes(buf[start : start + end]).decode("utf-8", "replace")
