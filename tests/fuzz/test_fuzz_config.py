"""Hostile configuration: the hooks' environment (``ProbeConfig.from_env``, the launcher variables
the ring identity comes from) and what `sentinel daemon` reads at start (catalog files, the
catalog under --dir, its options). A bad hooks setting is ignored with one message and the
default kept; a bad daemon setting stops the daemon with one clear line and exit code 2."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from fuzz_support import count, fuzz
from hypothesis import example
from hypothesis import strategies as st

from sentinel_hooks import ringformat as rf
from sentinel_hooks.config import MODES, PROBES, ProbeConfig
from sentinel_hooks.writer import identity_from_env

INT_KEYS = {"SENTINEL_SAMPLE_EVERY": ("sample_every", 1, (1 << 31) - 1, 1),
            "SENTINEL_CONTAIN_PAGE": ("contain_page", 0, (1 << 31) - 1, 0),
            "SENTINEL_DRAIN_MS": ("drain_ms", 1, 3_600_000, 100)}
KEYS = ("SENTINEL_MODE", "SENTINEL_CHECKS", *INT_KEYS, "SENTINEL_OTHER")
ODD = ("", " ", "0", "1", "-1", "+7", "07", "1_000", "1e3", "0x10", "\u0663", "\u00b2", "9" * 5000, "1" + "0" * 400,
       "2147483647", "2147483648", "3600001", "observe", " TRAP ", "Contain", "paged_kv", "batch, strides", ",,",
       "paged_kv,nope", "\t\n", "\x00", "\ufffd")


def expected(env: dict[str, str]) -> tuple[dict, set[str]]:
    """What from_env must make of ``env``, written out independently: (fields, keys reported)."""
    want: dict = {"mode": "observe", "enabled": frozenset(PROBES)}
    bad = set()
    mode = env.get("SENTINEL_MODE", "").strip().lower()
    if mode in MODES:
        want["mode"] = mode
    elif mode:
        bad.add("SENTINEL_MODE")
    for key, (attr, low, high, default) in INT_KEYS.items():
        raw = env.get(key, "").strip()
        want[attr] = default
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is not None and low <= value <= high:
            want[attr] = value
        else:
            bad.add(key)
    raw = env.get("SENTINEL_CHECKS", "").strip()
    checks = {c.strip() for c in raw.split(",") if c.strip()}
    if raw:  # a list, even one naming nothing known ("," or a typo), replaces the default: as documented
        want["enabled"] = frozenset(checks & set(PROBES))
        if checks - set(PROBES):
            bad.add("SENTINEL_CHECKS")
    return want, bad


def check_probe_env(env: dict[str, str]) -> None:
    cfg, problems = ProbeConfig.from_env(env)
    want, bad = expected(env)
    assert {k: getattr(cfg, k) for k in want} == want
    assert all(isinstance(p, str) and "\n" not in p and len(p) < 400 for p in problems)
    assert {k for k in KEYS if any(p.startswith(k + "=") or p.startswith(k + " ") for p in problems)} == bad


VALUES = st.one_of(st.sampled_from(ODD), st.text(max_size=12), st.integers().map(str))


@example({"SENTINEL_DRAIN_MS": "1" + "0" * 400})  # accepted, then drain_ms / 1000.0 raised OverflowError
@example({"SENTINEL_CONTAIN_PAGE": str(1 << 40)})  # accepted, then overflowed the int32 page table
def _probe_env(env: dict[str, str]) -> None:
    check_probe_env(env)


test_probe_env, test_probe_env_long = fuzz("config", st.dictionaries(st.sampled_from(KEYS), VALUES), ci=400,
                                           long=20_000)(_probe_env)


def _probe_env_loop(n: int, seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "0123456789-+_ ,.eExX\u0663\u00b2abcdefghijklmnopqrstuvwxyz"
    for _ in range(n):
        env = {}
        for key in rng.sample(KEYS, rng.randint(0, len(KEYS))):
            env[key] = rng.choice(ODD) if rng.random() < 0.3 else "".join(
                rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        check_probe_env(env)
    count("config", n)


def test_probe_env_loop() -> None:
    _probe_env_loop(5_000, seed=41)


@pytest.mark.slow
def test_probe_env_loop_long() -> None:
    _probe_env_loop(150_000, seed=42)


@pytest.mark.parametrize("value", ["\u00b2", "--1", "9999999999"])
def test_identity_env_never_stops_the_ring(value: str) -> None:
    identity = identity_from_env({"RANK": value, "LOCAL_RANK": value, "WORLD_SIZE": value})
    assert identity["rank"] is None and identity["world_size"] is None
    rf.pack_header(identity, 1024, 1)


def test_bad_launcher_rank_leaves_the_process_running(h) -> None:  # noqa: ANN001 - the harness fixture
    # A RANK the identity cannot hold is taken as unset: the ring is created, the hooks record.
    code = "import sentinel_hooks as sh\nfor _ in range(3): sh.step()\nimport json; print(json.dumps(sh.stats()))\n"
    res = h.run_py(code, env=h.hooked_env(RANK="\u00b2"))
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["active"] and stats["steps"] == 3 and stats["disabled_reason"] is None, stats
    assert "Traceback" not in res.stderr
    count("config")


# -- `sentinel daemon` start-up ------------------------------------------------------------------------------

def _catalog(text: bytes | str) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


BAD_CATALOGS = {
    "syntax": "[[issue]\n",
    "deep_arrays": "a = " + "[" * 5000 + "]" * 5000,  # RecursionError escaped before the fix: a traceback
    "deep_tables": "a = " + "{b = " * 3000 + "1" + "}" * 3000,
    "deep_regex": "[[issue]]\nid = 'x'\n[issue.match]\nkernel = '" + "(" * 2000 + ")" * 2000 + "'\n",
    "huge_repeat": "[[issue]]\nid = 'x'\n[issue.match]\nkernel = 'a{99999999999999999999}'\n",
    "not_utf8": b"[[issue]]\nid = '\xff\xfe'\n",
    "unknown_key": "[[issue]]\nid = 'x'\nseverity = 1\n[issue.match]\nkernel = 'k'\n",
    "no_condition": "[[issue]]\nid = 'x'\n",
    "xid_code": "[[xid]]\ncode = '79'\n",
    "nul": "[[issue]]\nid = 'x\x00'\n",
}


def _daemon_start(h, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:  # noqa: ANN001
    return h.run([h.sentinel, "daemon", "--dir", h.dir, "--listen", "127.0.0.1:0", "--no-nvml", *args],
                 env=h.env(), timeout=timeout)


def _one_clear_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    msg = json.loads(line) if line.startswith("{") else {"msg": line, "error": line}
    assert all(n in msg["error"] for n in needles), (needles, line)
    return line


@pytest.mark.parametrize("name", sorted(BAD_CATALOGS))
def test_bad_catalog_option_stops_the_daemon_with_one_line(h, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    path = tmp_path / f"{name}.toml"
    path.write_bytes(_catalog(BAD_CATALOGS[name]))
    _one_clear_line(_daemon_start(h, "--catalog", str(path)), str(path))
    count("config")


@pytest.mark.parametrize("name", ["deep_arrays", "deep_regex", "not_utf8"])
def test_bad_catalog_in_dir_stops_the_daemon_with_one_line(h, name: str) -> None:  # noqa: ANN001
    path = Path(h.dir) / "catalog.toml"
    path.write_bytes(_catalog(BAD_CATALOGS[name]))
    _one_clear_line(_daemon_start(h), str(path))
    count("config")


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_unreadable_catalog_stops_the_daemon_with_one_line(h, tmp_path: Path, what: str) -> None:  # noqa: ANN001
    path = tmp_path / "nope.toml" if what == "missing" else tmp_path
    _one_clear_line(_daemon_start(h, "--catalog", str(path)), str(path))
    count("config")


@pytest.mark.parametrize("args", [("--listen", "127.0.0.1:99999"), ("--listen", "nope"), ("--poll-interval", "abc"),
                                  ("--cores-per-signature", "1.5"), ("--allow-uid", "root")])
def test_malformed_option_exits_2(h, args: tuple[str, ...]) -> None:  # noqa: ANN001
    res = _daemon_start(h, *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines()[-1].startswith("sentinel daemon: error: argument " + args[0])
    count("config")


@pytest.mark.parametrize("option,value", [("--cores-max-mb", "nan"), ("--cores-max-mb", "inf"),
                                          ("--poll-interval", "-1"), ("--rescan-interval", "nan"),
                                          ("--hang-floor", "0"), ("--gdb-timeout", "-inf"),
                                          ("--cores-per-signature", "0")])
def test_out_of_range_option_exits_2(h, option: str, value: str) -> None:  # noqa: ANN001
    res = _daemon_start(h, option, value)
    assert res.returncode == 2 and "Traceback" not in res.stderr
