"""Collective hangs inside CUDA graphs on 2 GPUs (tests/gpu/graph_hang.py drives them): a rank whose
host stalls before a replay, whose GPU is stuck before a collective, or whose replay faults, through
torch's NCCL and through a non-torch NCCL binding (CuPy's) behind a GroupCoordinator-shaped class, is
named culprit within 10 s by the daemon with its default thresholds. Skipped without 2 GPUs (CuPy
cases without CuPy); run by tests/gpu/run.sh."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
if torch.cuda.device_count() < 2:
    pytest.skip("needs 2 GPUs", allow_module_level=True)

import graph_hang  # noqa: E402  (tests/gpu on sys.path: pytest's rootdir-relative import)

CASES = [("stall", "torch", "host_stall"), ("stall", "cupy", "host_stall"), ("gpu_stall", "torch", "gpu_behind"),
         ("fault", "torch", "died"), ("fault", "cupy", "died")]


@pytest.mark.parametrize(("scenario", "backend", "reason"), CASES)
def test_culprit_named_within_10s(tmp_path, scenario, backend, reason):
    if backend == "cupy" and importlib.util.find_spec("cupy") is None:
        pytest.skip("CuPy is not installed")
    r = graph_hang.run_scenario(scenario, backend, str(tmp_path))
    assert r["named_s"] is not None and r["named_s"] <= graph_hang.GOAL_S, r
    assert [(c["rank"], c["reason"]) for c in r["culprits"]] == [(1, reason)], r
    assert r["victims"] == [0] or scenario == "fault", r  # a dead rank's peer waits; no victim list is needed


def test_healthy_replays_name_no_hang(tmp_path):
    r = graph_hang.run_scenario("healthy", "torch", str(tmp_path), duration_s=60.0)
    assert r["ok"] and r["hangs_named"] == 0, r
