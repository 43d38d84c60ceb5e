"""`sentinel demo --vllm` runs the real vLLM engine scenario when the cached environment exists."""

import pytest

from sentinel.demo.vllm_demo import default_python

pytestmark = [pytest.mark.vllm]


def test_demo_vllm_scenario(h, tmp_path):
    import os

    if not os.access(default_python(), os.X_OK):
        pytest.skip("no vLLM environment: run `make vllm-env` (`make test` does it)")
    res = h.run([h.sentinel, "demo", "--vllm", "--dir", str(tmp_path / "d")], env=h.env(), timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "worker rank 0" in res.stdout and "page-table headroom" in res.stdout
    assert "engine core" in res.stdout


def test_demo_vllm_explains_a_missing_environment(h, tmp_path):
    res = h.run([h.sentinel, "demo", "--vllm", "--vllm-python", str(tmp_path / "nope" / "python")], env=h.env())
    assert res.returncode == 2 and "make vllm-env" in res.stdout
