"""The c10d watchdog reader: timeout lines, PG status lines of each PyTorch layout, the desync-debug
report's culprits and rank snapshot, NCCL WARN lines; the field case pt152623 diagnosed as its
README states; fuzzed; and `sentinel triage FILE` on them."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.triage.readers import detect, watchdog
from sentinel.triage.readers.watchdog import PgStatus, RankState, WorkTimeout

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "watchdog"


def _read(name: str) -> watchdog.WatchdogReport:
    path = FIXTURES / name
    assert detect(path.read_bytes()[:65536]) is watchdog
    return watchdog.parse(path.read_text())


def test_field_case_pt152623_desync_report() -> None:
    """Collective hang in PG 0 (default_pg): culprit rank 7 (finished #182, never joined #183);
    ranks 0-2 wait in ALLREDUCE #315, ranks 3-6 in _ALLGATHER_BASE #317; timeout 600 s."""
    rep = _read("pt152623-desync-rank0.log")
    assert rep.timeouts == [WorkTimeout(0, 241, "ALLREDUCE", 6, 6, 600000, 600086)]
    assert rep.pg_status == [PgStatus(0, "0", "default_pg", 241, 315, 183)]
    (d,) = rep.desyncs
    assert (d.rank, d.op, d.seq) == (0, "ALLREDUCE", 315)
    assert d.culprits == [((7,), "finished collective #182, but didn't join collective #183 (count from 1)")]
    assert d.states == [RankState(182, "finished", (7,), "ALLREDUCE"), RankState(315, "started", (0, 1, 2), "ALLREDUCE"),
                        RankState(317, "started", (3, 4, 5, 6), "_ALLGATHER_BASE")]
    assert rep.culprit_ranks() == [7]


def test_several_ranks_timing_out_without_a_desync_report() -> None:
    rep = _read("multi-rank-pg1-no-desync.log")
    assert sorted(t.rank for t in rep.timeouts) == [0, 2, 3, 4]
    assert {(t.seq, t.op, t.numel_in, t.timeout_ms) for t in rep.timeouts} == {(1580, "ALLREDUCE", 466119168, 600000)}
    assert [(p.rank, p.pg, p.at_work, p.last_enqueued, p.last_completed) for p in rep.pg_status] == [
        (0, "1", 1580, 1582, 1579), (3, "1", 1580, 1582, 1579)]
    assert rep.desyncs == [] and rep.culprit_ranks() == []


def test_timeout_at_nccl_work_and_nccl_warn() -> None:
    rep = _read("vllm-worker-timeout-at-nccl-work.log")
    assert [(t.rank, t.seq, t.ran_ms) for t in rep.timeouts] == [(0, 2, 600059)]
    assert [(p.pg, p.at_work, p.last_enqueued, p.last_completed) for p in rep.pg_status] == [("2", 2, 2, 1)]
    assert rep.nccl_warnings == ["Cuda failure 'an illegal memory access was encountered'"]


def test_nccl_warn_keeps_where_nccl_raised_it() -> None:
    """The text a catalog regex searches carries NCCL's source location: 'Cuda failure 1 'invalid
    argument'' from transport/nvls.cc is an NVLS fault, from another file another one."""
    rep = watchdog.parse(
        "node-a:242431:242479 [5] transport/nvls.cc:158 NCCL WARN Cuda failure 1 'invalid argument'\n"
        "[2025-04-08 08:39:46] devgpu-a:589012:591652 [0] transport/nvls.cc:158 NCCL WARN Cuda failure 1 'invalid argument'\n"
        "(VllmWorker rank=1 pid=110) [1] NCCL WARN Call to ibv_create_qp failed\n")
    assert rep.nccl_warnings == ["Cuda failure 1 'invalid argument'"] * 2 + ["Call to ibv_create_qp failed"]
    assert rep.nccl_warn_at == ["transport/nvls.cc:158", "transport/nvls.cc:158", ""]
    assert rep.text().splitlines() == ["transport/nvls.cc:158 NCCL WARN Cuda failure 1 'invalid argument'",
                                       "NCCL WARN Call to ibv_create_qp failed"]


def test_ray_prefix_and_the_old_format() -> None:
    rep = _read("ray-old-format.log")
    assert rep.timeouts == [WorkTimeout(4, 20518, "ALLREDUCE", 106496, 106496, 1800000, 1800270)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(max_size=200),
    st.sampled_from([ln for f in sorted(FIXTURES.glob("*.log")) for ln in f.read_text().splitlines()]),
    st.builds(lambda a, b: f"{a}[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum={b}",
              st.text(max_size=20), st.text(max_size=80)),
), max_size=30))
def test_fuzz_never_raises(lines: list[str]) -> None:
    rep = watchdog.parse("\n".join(lines))
    assert all(t.seq >= 0 for t in rep.timeouts) and isinstance(rep.culprit_ranks(), list)


def test_triage_names_the_culprit_and_the_waiting_ranks(h) -> None:  # noqa: ANN001
    path = FIXTURES / "pt152623-desync-rank0.log"
    res = h.run([h.sentinel, "triage", str(path), "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[:5] == [
        f"{path}: collective hang in PG 0 (default_pg) at ALLREDUCE collective #315, timeout 600 s",
        "  rank 0: last enqueued #315, last completed #183",
        "  culprit   rank 7: finished collective #182, but didn't join collective #183 (count from 1)",
        "  waiting   rank 0-2: started ALLREDUCE #315",
        "  waiting   rank 3-6: started _ALLGATHER_BASE #317",
    ]
    data = json.loads(h.run([h.sentinel, "triage", str(path), "--json", "--dir", h.dir], env=h.env()).stdout)
    assert data["culprit_ranks"] == [7] and data["pg_status"][0]["pg_name"] == "default_pg"


def test_a_large_report_read_by_its_key_lines_gives_the_same_hang() -> None:
    """Past triage.STREAM_BYTES a file is read through readers.scan: every watchdog fixture gives the
    same timeouts, statuses, desync culprits and states that way."""
    import io

    from sentinel.triage.readers.scan import relevant_lines

    for path in sorted(FIXTURES.glob("*.log")):
        whole = watchdog.parse(path.read_text(errors="replace"))
        part = watchdog.parse(relevant_lines(io.BytesIO(path.read_bytes()), watchdog.KEYS))
        assert (part.timeouts, part.pg_status, part.desyncs, part.nccl_warnings) == (
            whole.timeouts, whole.pg_status, whole.desyncs, whole.nccl_warnings), path.name
