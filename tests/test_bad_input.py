"""Acceptance 1: files under rings/ that are not valid rings are rejected once, counted and
exported, and a valid ring next to them is still read."""

from __future__ import annotations

import logging
import os
import random
import struct
from pathlib import Path

import pytest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.exporter.collectors import build_registry
from sentinel.exporter.server import serve
from sentinel_hooks import layout
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import RingWriter

CAP = 1024


def _header(**overrides) -> bytearray:
    """A valid header block for a CAP-slot ring, with some raw fields overridden."""
    buf = bytearray(rf.HEADER_SIZE)
    buf[: rf.HEADER.size] = rf.pack_header({"pid": 4242, "host": "bad"}, CAP, 1)
    offsets, pos = {}, 0
    for name, code in rf.HEADER_FIELDS:
        offsets[name] = (pos, code)
        pos += struct.calcsize("<" + code)
    for name, value in overrides.items():
        off, code = offsets[name]
        struct.pack_into("<" + code, buf, off, value)
    return buf


def make_bad_files(rings: Path) -> dict[str, str]:
    """Bad files of each kind; returns {file name: expected rejection reason}."""
    full = rf.file_size(CAP)
    rng = random.Random(1234)
    files = {
        "zero.ring": (b"", "truncated"),
        "shorthdr.ring": (bytes(_header())[:100], "truncated"),
        # A complete, valid header whose record area is cut short.
        "truncated.ring": (bytes(_header()) + bytes(rf.STRINGS_SIZE + 10 * rf.RECORD_SIZE), "truncated"),
        "magic.ring": (bytes(_header(magic=b"NOTARING")) + bytes(full - rf.HEADER_SIZE), "bad_magic"),
        "version.ring": (bytes(_header(version=rf.VERSION + 1)) + bytes(full - rf.HEADER_SIZE), "bad_version"),
        "geometry.ring": (bytes(_header(record_size=32)) + bytes(full - rf.HEADER_SIZE), "bad_geometry"),
        "capacity.ring": (bytes(_header(capacity=1000)) + bytes(full - rf.HEADER_SIZE), "bad_geometry"),
        "hugecap.ring": (bytes(_header(capacity=1 << 26)) + bytes(full - rf.HEADER_SIZE), "truncated"),
        "random.ring": (rng.randbytes(full), "bad_magic"),
        "randshort.ring": (rng.randbytes(777), "truncated"),
    }
    expected = {}
    for name, (data, reason) in files.items():
        (rings / name).write_bytes(data)
        expected[name] = reason
    (rings / "adir.ring").mkdir()
    expected["adir.ring"] = "not_a_file"
    if os.geteuid() == 0:  # only root can give a file away: a valid ring owned by someone else
        other = rings / "foreign.ring"
        other.write_bytes(bytes(_header()) + bytes(full - rf.HEADER_SIZE))
        os.chown(other, 65534, 65534)
        expected["foreign.ring"] = "foreign_owner"
    return expected


def test_bad_rings_rejected_once_counted_exported_and_valid_ring_served(sdir, h, caplog):
    caplog.set_level(logging.INFO, logger="sentinel.daemon")
    rings = Path(layout.rings_dir(sdir))
    rings.mkdir(parents=True)
    expected = make_bad_files(rings)

    writer = RingWriter.create(sdir, {"pid": os.getpid(), "host": "good", "rank": 3}, capacity=CAP)
    for i in range(10):
        writer.step()
        writer.emit(rf.Kind.EVENT, 9, i, i, i)

    daemon = Daemon(DaemonConfig(base_dir=sdir, use_events=False, rescan_interval=0))
    port = h.free_port()
    server, thread = serve(build_registry(lambda: daemon.snapshot), "127.0.0.1", port)
    try:
        for _ in range(4):
            daemon.poll_once()

        # Exactly one log line per bad file, however many polls saw it.
        rejected_logs = [r for r in caplog.records if r.name == "sentinel.daemon" and r.getMessage() == "ring rejected"]
        per_file = {}
        for r in rejected_logs:
            per_file.setdefault(r.ring, []).append(r.reason)
        assert per_file == {name: [reason] for name, reason in expected.items()}

        # A counter per reason.
        want: dict[str, int] = {}
        for reason in expected.values():
            want[reason] = want.get(reason, 0) + 1
        assert daemon.rings.rejected == want
        assert daemon.snapshot.rejected == want

        # The valid ring is attached and its records ingested.
        states = {v.ring: v for v in daemon.snapshot.processes}
        assert list(states) == [os.path.basename(writer.path)]
        view = states[os.path.basename(writer.path)]
        assert view.alive and view.step == 10
        assert view.kinds == {"step": 10, "event": 10}
        assert view.torn == 0 and view.overwritten == 0

        # The daemon keeps serving it: new records keep arriving, the bad files stay rejected.
        for _ in range(5):
            writer.step()
        daemon.poll_once()
        daemon.poll_once()
        view = daemon.snapshot.processes[0]
        assert view.step == 15 and view.kinds == {"step": 15, "event": 10}
        assert daemon.rings.rejected == want
        assert len([r for r in caplog.records if r.getMessage() == "ring rejected"]) == len(expected)

        # Exported over HTTP.
        text = h.fetch(f"http://127.0.0.1:{port}/metrics")
        for reason, n in want.items():
            assert h.samples(text, "sentinel_rings_rejected_total", reason=reason) == [({"reason": reason}, float(n))]
        assert h.samples(text, "sentinel_process_step", rank="3") == [
            ({"job_id": "", "host": "good", "pod": "", "namespace": "", "rank": "3", "local_rank": "",
              "pid": str(os.getpid())}, 15.0)
        ]
        assert h.samples(text, "sentinel_ring_records_total", rank="3", kind="event")[0][1] == 10.0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        daemon.close()
        writer.close()


@pytest.mark.parametrize("poll_first", [False, True])
def test_symlink_ring_is_rejected_not_followed(sdir, caplog, poll_first):
    """A symlink named *.ring (O_NOFOLLOW) is rejected as unreadable, once."""
    caplog.set_level(logging.INFO, logger="sentinel.daemon")
    rings = Path(layout.rings_dir(sdir))
    rings.mkdir(parents=True)
    target = Path(sdir) / "elsewhere"
    target.write_bytes(b"x")
    daemon = Daemon(DaemonConfig(base_dir=sdir, use_events=False, rescan_interval=0))
    try:
        if poll_first:
            daemon.poll_once()
        (rings / "link.ring").symlink_to(target)
        for _ in range(3):
            daemon.poll_once()
        assert daemon.rings.rejected == {"unreadable": 1}
        assert [r.ring for r in caplog.records if r.getMessage() == "ring rejected"] == ["link.ring"]
        assert daemon.snapshot.processes == ()
    finally:
        daemon.close()
