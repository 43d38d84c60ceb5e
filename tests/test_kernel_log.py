"""The kernel-log reader: NVRM Xid and NVSwitch SXid lines in every layout people paste (dmesg with
each time format, journald, /dev/kmsg), field by field, from fixtures reconstructed from public
reports (tests/fixtures/kernel-log/README.md); fuzzed; and `sentinel triage FILE` on them."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.triage.readers import detect, kernel_log
from sentinel.triage.readers.kernel_log import XidEvent

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kernel-log"


def _read(name: str) -> list[XidEvent]:
    path = FIXTURES / name
    assert detect(path.read_bytes()[:65536]) is kernel_log
    return kernel_log.parse(path.read_text())


def test_dmesg_mmu_fault_with_process_then_unattributed_errors() -> None:
    e = _read("dmesg-xid31-mmu-fault.txt")
    assert [(x.xid, x.pid, x.process) for x in e] == [(31, 20811, "vllm_worker"), (62, None, None), (45, None, None),
                                                      (45, None, None)]
    assert {x.pci for x in e} == {"0000:0a:00"} and {x.uuid for x in e} == {"GPU-11111111-2222-3333-4444-555555555555"}
    assert e[0].mmu_fault == "FAULT_PRIV_VIOLATION ACCESS_TYPE_VIRT_READ @ 0x7f31_2a4c0000 (CE2 HUBCLIENT_CE0)"
    assert e[0].time == "14328.198504" and e[3].detail == "Ch 00000009"


def test_dmesg_ctime_sm_exception_and_ctx_switch_timeout() -> None:
    e = _read("dmesg-ctime-xid13-xid109.txt")
    assert [x.xid for x in e] == [13, 13, 13, 109]
    assert e[0].sm_exception == "Illegal Instruction Parameter" and e[1].sm_exception == "Multiple Warp Errors"
    assert e[0].pid is None and e[0].time == "Fri Aug 30 11:43:09 2024"
    assert (e[3].pid, e[3].process) == (40213, "pt_main_thread") and "CTX SWITCH TIMEOUT" in e[3].detail


def test_journald_lines_with_a_pid_and_no_name() -> None:
    e = _read("journald-xid31-no-name.txt")
    assert [(x.xid, x.pid, x.process, x.time) for x in e] == [(31, 51234, None, "Nov 29 11:28:11")] * 2
    assert [x.mmu_fault.split(" @ ")[0] for x in e] == ["FAULT_PDE ACCESS_TYPE_VIRT_WRITE", "FAULT_PTE ACCESS_TYPE_VIRT_READ"]
    assert e[0].uuid == "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def test_an_older_driver_without_pid_or_name() -> None:
    e = _read("dmesg-old-driver-no-pid.txt")
    assert [(x.xid, x.pid) for x in e] == [(31, None), (13, None), (32, None)]
    assert e[0].mmu_fault.startswith("FAULT_PDE ACCESS_TYPE_READ @ 0x17_00592000")
    assert e[1].detail == "Graphics Exception: Class 0x0 Subchannel 0x0 Mismatch"


def test_nvswitch_sxid_and_iso_times() -> None:
    e = _read("dmesg-iso-nvswitch-sxid.txt")
    assert [(x.xid, x.nvswitch, x.pci) for x in e] == [(12028, True, "0000:84:00.0"), (45, False, "0000:9d:00")]
    assert e[0].time == "2025-01-25T10:34:54,859532+00:00" and e[0].detail.startswith("Data {0x000001c0")
    assert (e[1].pid, e[1].process) == (7781, "python3")


def test_kmsg_records() -> None:
    e = _read("kmsg-xid79.txt")
    assert [(x.xid, x.pid, x.process) for x in e] == [(79, 8812, "sglang_sched")]
    assert e[0].time == "31543.449871s since boot" and e[0].detail == "GPU has fallen off the bus."
    assert e[0].uuid == "GPU-12345678-90ab-cdef-1234-567890abcdef"


def test_lines_that_only_mention_xid_are_not_events() -> None:
    text = "gpud: regex 'SXid.*?: (\\d+),'\nNVRM: Xid (PCI:zz): 31, bad address\nnvidia 0000:3b:00.0: Xid 79 mentioned\n"
    assert kernel_log.parse(text) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(max_size=200),
    st.sampled_from([ln for f in sorted(FIXTURES.glob("*.txt")) for ln in f.read_text().splitlines()]),
    st.builds(lambda a, b: f"{a}NVRM: Xid (PCI:0000:01:00): {b}", st.text(max_size=30), st.text(max_size=120)),
), max_size=20))
def test_fuzz_never_raises_and_returns_events(lines: list[str]) -> None:
    events = kernel_log.parse("\n".join(lines))
    assert all(isinstance(x, XidEvent) and x.xid >= 0 and x.pci for x in events)


def test_triage_reports_each_gpu_and_xid_with_the_catalog(h) -> None:  # noqa: ANN001
    path = FIXTURES / "dmesg-xid31-mmu-fault.txt"
    res = h.run([h.sentinel, "triage", str(path), "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.splitlines()[0] == f"{path}: 4 NVRM Xid event(s) on 1 GPU(s)"
    assert "Xid 31 GPU memory page fault [critical] x1" in out and "vllm_worker (pid 20811)" in out
    assert "fault      FAULT_PRIV_VIOLATION ACCESS_TYPE_VIRT_READ" in out and "Xid 45" in out
    res = h.run([h.sentinel, "triage", str(path), "--json", "--dir", h.dir], env=h.env())
    rows = json.loads(res.stdout)
    assert [r["xid"] for r in rows] == [31, 62, 45, 45] and rows[0]["catalog"]["name"] == "GPU memory page fault"
