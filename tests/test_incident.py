"""Several files of one failure given together to `sentinel triage` join into one incident: the
strongest fault record absorbs the others, the kernel log's XIDs and the hang reports join it, and
the ranks are split into the culprit (the one that faulted, the ones a hang report names) and the
victims (the ones that only waited)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from sentinel.cli.main import main
from sentinel.triage import catalog, incident, records
from sentinel.triage.readers import kernel_log, serving_log

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LOG = FIXTURES / "serving-log" / "vllm-v1-worker-illegal-address.log"  # rank 5 faults
WATCHDOG = FIXTURES / "watchdog" / "multi-rank-pg1-no-desync.log"
DMESG = FIXTURES / "kernel-log" / "dmesg-xid31-mmu-fault.txt"


def _triage(*paths: Path, tmp: Path) -> tuple[int, object, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["triage", *map(str, paths), "--json", "--dir", str(tmp)])
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        main(["triage", *map(str, paths), "--dir", str(tmp)])
    return rc, json.loads(out.getvalue()), text.getvalue()


def test_a_faulting_rank_its_hanging_peers_and_the_xid_are_one_incident(tmp_path: Path) -> None:
    rc, doc, text = _triage(LOG, WATCHDOG, DMESG, tmp=tmp_path)
    assert rc == 0
    inc = doc[-1]["result"]["incident"]
    assert doc[-1]["file"] == "the incident (all files together)" and len(inc["files"]) == 3
    rec = inc["record"]
    assert rec["source"] == "log" and rec["exception_class"] == "illegal_address"
    assert rec["identity"]["rank"] == 5 and inc["culprit_ranks"][0] == 5
    assert "xid_31" in rec["evidence"] and "collective_hang" in rec["evidence"]
    assert 5 not in inc["victim_ranks"] and inc["victim_ranks"]
    assert [h["source"] for h in inc["hangs"]] == [str(WATCHDOG)]
    assert "== the incident (all files together)" in text and "  culprit     rank 5" in text


def test_the_strongest_record_leads_and_absorbs_the_others() -> None:
    cat = catalog.load([])
    log = records.from_log(serving_log.parse(LOG.read_text()), str(LOG), cat)
    transcript = records.FaultRecord(source="transcript", exception="Warp Illegal Address", exception_class="",
                                     kernel="fastertransformer::embeddingLookupPosEncoding<__half>").finish(cat)
    xids = kernel_log.parse(DMESG.read_text())
    inc = incident.join(["a", "b", "c"], [log, transcript], [], xids, cat)
    assert inc.record is transcript and transcript.seen_as == ["log"]
    assert transcript.top_frame == log.top_frame  # what the lead lacked, the log gave
    assert transcript.kernel_family == "fastertransformer::embeddingLookupPosEncoding"
    assert {f"xid_{x.xid}" for x in xids if not x.nvswitch} <= set(transcript.evidence)


def test_one_file_is_no_incident(tmp_path: Path) -> None:
    rc, doc, text = _triage(LOG, tmp=tmp_path)
    assert rc == 0 and isinstance(doc, dict) and "incident" not in doc and "Incident" not in text


def test_a_gpu_fault_leads_over_another_ranks_engine_death_and_keeps_its_rank() -> None:
    """rank 0's log shows only the engine's death, rank 5's the CUDA error: rank 5's record leads, and
    rank 0's identity and frame are not copied into it."""
    cat = catalog.load([])
    death = records.from_log(serving_log.parse(
        "[rank0]: Traceback (most recent call last):\n"
        '[rank0]:   File "/srv/app/engine.py", line 10, in run\n'
        "[rank0]: vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.\n"), "r0.log", cat)
    fault = records.from_log(serving_log.parse(LOG.read_text()), str(LOG), cat)
    assert death.kind == "crash" and fault.kind == "cuda"
    inc = incident.join(["r0.log", "r5.log"], [death, fault], [], [], cat)
    assert inc.record is fault and fault.identity["rank"] == 5
    assert fault.top_frame.startswith("vllm/model_executor/layers/rotary_embedding.py")
    assert inc.culprit_ranks == [5]
