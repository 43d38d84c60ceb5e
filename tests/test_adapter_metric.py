"""An adapter error (a check turned off) shows up as sentinel_adapter_errors_total{adapter}."""

import os

from prometheus_client import generate_latest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.exporter.collectors import build_registry
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import RingWriter


def test_adapter_errors_are_counted_per_adapter(sdir):
    w = RingWriter.create(sdir, {"pid": os.getpid(), "host": "h", "rank": 0}, capacity=64)
    for name in ("adapter:vllm", "adapter:vllm", "adapter:sglang"):
        w.emit(rf.Kind.EVENT, rf.ADAPTER_ERROR_EVENT, 1, 0, 0, w.intern(name))
    w.emit(rf.Kind.EVENT, 7, 1, 0, 0)  # a user event: not an adapter error
    d = Daemon(DaemonConfig(base_dir=sdir, use_events=False, rescan_interval=0, nvml=False))
    try:
        d.poll_once()
        text = generate_latest(build_registry(lambda: d.snapshot)).decode()
        assert 'adapter="vllm"' in text and 'adapter="sglang"' in text
        lines = [ln for ln in text.splitlines() if ln.startswith("sentinel_adapter_errors_total{")]
        assert sorted(float(ln.rsplit(" ", 1)[1]) for ln in lines) == [1.0, 2.0]
    finally:
        d.close()
        w.close(clean_exit=False)
