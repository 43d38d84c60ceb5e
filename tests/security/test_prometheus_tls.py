"""A real Prometheus scrapes the daemon over TLS, with a client certificate and basic auth, the way
a production scrape config would: `up == 1` and the daemon's series arrive. The same scrape with a
wrong password is `up == 0`: the credentials are what lets it in."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
import yaml
from security_support import SENTINEL, Pki, Procs, auth_header, request

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"),
                                reason="prometheus not installed (make tools)")


def _query(port: int, promql: str) -> list[dict]:
    status, body = request(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}")
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_prometheus_scrapes_over_tls_with_basic_auth(h, procs: Procs, tmp_path: Path, pki: Pki) -> None:
    assert PROMETHEUS, "CI must install prometheus (make tools)"
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca)},
        "basic_auth_users": {"prometheus": bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=4)).decode()},
    }))
    port = h.free_port()
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    procs.start_daemon([SENTINEL, "daemon", "--dir", h.dir, "--listen", f"127.0.0.1:{port}", "--no-nvml",
                        "--web-config", str(web)], tmp_path / "daemon.log", f"https://127.0.0.1:{port}/metrics",
                       context=ctx, headers=auth_header("prometheus", "scrape-me"), env=h.env())

    good, bad = tmp_path / "password", tmp_path / "wrong-password"
    good.write_text("scrape-me")
    bad.write_text("guess")

    def job(name: str, password: Path) -> dict:
        return {"job_name": name, "scheme": "https", "scrape_interval": "1s",
                "tls_config": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)},
                "basic_auth": {"username": "prometheus", "password_file": str(password)},
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}

    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"},
                                   "scrape_configs": [job("sentinel", good), job("wrong-password", bad)]}))
    prom_port = h.free_port()
    procs.start([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}"], tmp_path / "prometheus.log")

    def up() -> dict[str, str]:
        return {r["metric"]["job"]: r["value"][1] for r in _query(prom_port, "up")}

    # Any one scrape may fail on a loaded machine (Prometheus gives it the 1 s interval as its
    # timeout): wait for a good one, however many that takes; the deadline only bounds a hang.
    def good_up() -> dict[str, str] | None:
        u = up()
        return u if u.get("sentinel") == "1" and "wrong-password" in u else None

    assert h.wait_for(good_up, timeout=120, interval=0.25, what="the good scrape job up and the other one scraped") \
        == {"sentinel": "1", "wrong-password": "0"}
    # The wrong password never got in, in any scrape so far.
    (never,) = _query(prom_port, 'max_over_time(up{job="wrong-password"}[1h])')
    assert never["value"][1] == "0", never
    series = h.wait_for(lambda: _query(prom_port, 'sentinel_daemon_polls_total{job="sentinel"}'), timeout=120,
                        interval=0.25, what="the daemon's series in Prometheus")
    assert float(series[0]["value"][1]) > 0
    assert _query(prom_port, 'sentinel_daemon_polls_total{job="wrong-password"}') == []
