"""Flight Recorder dumps are pickles: read with a restricted unpickler that refuses every global
(the classic os.system payload included), fuzzed, and refused by the daemon with a counter."""

from __future__ import annotations

import os
import pickle
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.triage.readers import flight_recorder as fr

# The shape of the reference dump (rank 0 of the NCCL all_gather hang): plain containers only.
REFERENCE = {
    "version": "2.10",
    "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1]"}},
    "comm_lib_version": "2.27.5",
    "pg_status": {"0": {"last_enqueued_collective": 6, "last_started_collective": 6, "last_completed_collective": 5}},
    "entries": [
        {"record_id": i, "pg_id": 0, "process_group": ("0", "default_pg"), "collective_seq_id": i,
         "p2p_seq_id": 0, "op_id": i, "profiling_name": "nccl:_all_gather_base", "time_created_ns": 10**18 + i,
         "input_sizes": [[1048576]], "output_sizes": [[2097152]], "state": "completed" if i < 6 else "scheduled",
         "timeout_ms": 60000, "is_p2p": False}
        for i in range(1, 7)
    ],
}


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/sentinel-pwned-by-pickle",))


def test_reference_shaped_dump_is_summarised():
    s = fr.summarize(fr.loads(pickle.dumps(REFERENCE)))
    assert s["groups"]["0"]["last_enqueued"] == 6 and s["groups"]["0"]["last_completed"] == 5
    assert s["groups"]["0"]["last"][-1] == {"collective_seq_id": 6, "profiling_name": "nccl:_all_gather_base",
                                           "state": "scheduled"}


def test_os_system_payload_is_refused_and_never_runs():
    marker = "/tmp/sentinel-pwned-by-pickle"
    if os.path.exists(marker):
        os.unlink(marker)
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(fr.UnsafeDump, match="refused global (posix|os).system"):
            fr.loads(pickle.dumps({"entries": [_Boom()]}, protocol=proto))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("data", [b"", b"\x80\x04", pickle.dumps(REFERENCE)[:40], b"not a pickle at all",
                                  pickle.dumps([1, 2, 3]), pickle.dumps({"entries": "x"})])
def test_malformed_dumps_raise_a_clear_error(data):
    with pytest.raises(pickle.UnpicklingError):
        fr.summarize(fr.loads(data))


# No deadline and no generation-speed health check: a verdict must not hang on this machine's speed.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_never_escape(data):
    try:
        fr.summarize(fr.loads(data))
    except pickle.UnpicklingError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_fuzz_mutated_reference(noise):
    base = bytearray(pickle.dumps(REFERENCE, protocol=2))
    for i, b in enumerate(noise):
        base[(i * 131) % len(base)] = b
    try:
        fr.summarize(fr.loads(bytes(base)))
    except pickle.UnpicklingError:
        pass


def test_daemon_refuses_a_malicious_dump_and_counts_it(h):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, nvml=False))
    try:
        os.makedirs(os.path.join(h.dir, "fr"), exist_ok=True)
        path = os.path.join(h.dir, "fr", "trace_rank_0")
        with open(path, "wb") as f:
            f.write(pickle.dumps({"entries": [_Boom()]}))
        os.utime(path, (time.time() - 5, time.time() - 5))
        d.poll_once()
        d.poll_once()
        assert d.flight_recorder.rejected == 1
        assert not os.path.exists("/tmp/sentinel-pwned-by-pickle")
    finally:
        d.close()
