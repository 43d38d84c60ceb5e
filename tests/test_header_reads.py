"""Header fields are never read torn.

The writer updates the heartbeat (step, last_step_ns) and the counters in place while the daemon
polls them. Before each field got its own aligned 8-byte store (``ringformat.Word``), a reader
saw ``step == 0`` in about 1 of 2,000 reads: ``struct.pack_into`` zeroes its target before packing
byte by byte. Here a writer process rewrites every mutable field, and the identity block, as fast
as it can, while this process reads them through the daemon's own RingReader: 10 M heartbeat reads
and 100 k whole-header reads, every value checked against what the writer can have written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sentinel.daemon.ringreader import RingReader

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from header_hammer import IDENTITIES  # noqa: E402

HEARTBEAT_READS = 10_000_000
HEADER_READS = 100_000


def _heartbeat_reads(reader: RingReader, n: int, created_ns: int) -> tuple[int, int]:
    """(torn reads, times the step was seen to change). A read is torn if its step went backwards
    or is 0 (the writer stepped before we started), or its timestamp predates the ring."""
    heartbeat = reader.heartbeat
    torn = changes = 0
    last = 0
    for _ in range(n):
        step, ts = heartbeat()
        if step < last or step == 0 or ts < created_ns:
            torn += 1
        elif step != last:
            changes += 1
            last = step
    return torn, changes


def test_header_fields_are_never_read_torn(h):
    stop = h.scratch / "stop"
    writer = h.spawn([h.python, str(h.helpers / "header_hammer.py"), h.dir, str(stop)], env=h.hooked_env(),
                     text=True)
    ring = writer.stdout.readline().strip()
    assert ring, writer.stderr.read()
    reader = RingReader(ring)
    try:
        created = reader.header["created_ns"]
        torn, changes = _heartbeat_reads(reader, HEARTBEAT_READS, created)

        wholes = {tuple(sorted(i.items())) for i in IDENTITIES}
        header_torn, identity_changes, last_step, last_dropped, last_identity = 0, 0, 0, 0, None
        for _ in range(HEADER_READS):
            hd = reader.refresh_header()
            identity = tuple(sorted((k, hd[k]) for k in IDENTITIES[0]))
            if (identity not in wholes or hd["step"] < last_step or hd["dropped"] < last_dropped
                    or hd["last_step_ns"] < created or hd["pid"] != writer.pid or hd["host"] != "hammer"):
                header_torn += 1
                continue
            identity_changes += identity != last_identity
            last_step, last_dropped, last_identity = hd["step"], hd["dropped"], identity
        writer_running = writer.poll() is None
    finally:
        reader.close()
        stop.touch()
    assert writer.wait(timeout=60) == 0, writer.stderr.read()
    print(f"header reads: {HEARTBEAT_READS} heartbeat reads, {torn} torn, step seen changing {changes} times; "
          f"{HEADER_READS} whole-header reads, {header_torn} torn, identity seen changing {identity_changes} times")
    assert writer_running, "the writer stopped before the reads ended: nothing was read concurrently"
    assert changes > 0 and identity_changes > 1, "the writer never moved while it was read"
    assert torn == 0
    assert header_torn == 0
