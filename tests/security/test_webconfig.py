"""`sentinel daemon --web-config FILE`: TLS and basic auth on /metrics, in Prometheus's web-config
format. The parser (every error is one clear line, unknown keys refused, fuzzed), the CLI (exit 2),
and real HTTPS scrapes of a real daemon with certificates made by the real openssl: 200 with the
right credentials, 401 without; client certificates required and verified; a minimum TLS version;
a client that stalls in the handshake holding up no one."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import bcrypt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_support import SENTINEL, Pki, Procs, auth_header, request

from sentinel.exporter.webconfig import TLS_KEYS, TOP_KEYS, UNSUPPORTED, WebConfig, WebConfigError, parse

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()  # cost 4: fast tests, same format


def _tls_doc(pki: Pki, **extra: object) -> dict:
    return {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), **extra}


# -- the parser ------------------------------------------------------------------------------------

def test_a_full_config_parses(tmp_path: Path) -> None:
    text = f"""
tls_server_config:
  cert_file: server.crt
  key_file: /abs/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
basic_auth_users:
  prometheus: '{HASH}'
  htpasswd-style: '$2y${HASH[4:]}'
"""
    cfg = parse(text, str(tmp_path))
    assert cfg.tls.cert_file == str(tmp_path / "server.crt") and cfg.tls.key_file == "/abs/server.key"
    assert cfg.tls.client_ca_file == str(tmp_path / "ca.crt") and cfg.tls.client_auth == ssl.CERT_REQUIRED
    assert cfg.tls.min_version == ssl.TLSVersion.TLSv1_3 and cfg.scheme == "https"
    assert set(cfg.users) == {"prometheus", "htpasswd-style"}
    assert parse("") == WebConfig() and parse("basic_auth_users:\n") == WebConfig()


BAD = {
    "unknown top-level key": ("tls_config: {}", "unknown key 'tls_config'"),
    "unknown tls key": ("tls_server_config: {cert_file: a, key_file: b, certfile: c}", "unknown key 'tls_server_config.certfile'"),
    "unsupported exporter-toolkit key": ("http_server_config: {http2: false}", "http_server_config is not supported"),
    "unsupported tls key": ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [X]}",
                            "tls_server_config.cipher_suites is not supported"),
    "client auth without verification": ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: "
                                         "RequireAnyClientCert}", "RequireAnyClientCert is not supported"),
    "unknown client auth": ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Yes}",
                            "client_auth_type must be one of"),
    "verify without a CA": ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: "
                            "VerifyClientCertIfGiven}", "client_ca_file is required"),
    "a CA without client auth": ("tls_server_config: {cert_file: a, key_file: b, client_ca_file: c}",
                                 "client_auth_type is NoClientCert"),
    "missing key_file": ("tls_server_config: {cert_file: a}", "tls_server_config.key_file is required"),
    "bad min_version": ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS1.2}",
                        "min_version must be one of TLS10, TLS11, TLS12, TLS13"),
    "max below min": ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}",
                      "max_version is below min_version"),
    "a path that is not a string": ("tls_server_config: {cert_file: [a], key_file: b}", "cert_file must be a file path"),
    "a NUL in a path": ('tls_server_config: {cert_file: "a\\0b", key_file: b}', "contains a NUL byte"),
    "a plain password": ("basic_auth_users: {prometheus: hunter2}", "not a bcrypt hash"),
    "a user with a colon": (f"basic_auth_users: {{'a:b': '{HASH}'}}", "not a valid user name"),
    "users not a mapping": ("basic_auth_users: [a, b]", "must be a mapping"),
    "not a mapping": ("- a\n- b", "expected a mapping"),
    "min_version a list": ("tls_server_config: {cert_file: c, key_file: k, min_version: [1]}",
                           "min_version must be one of"),
    "client_auth_type a list": ("tls_server_config: {cert_file: c, key_file: k, client_auth_type: [x]}",
                                "client_auth_type must be one of"),
    "not YAML": ("tls_server_config: {cert_file: [", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_give_one_clear_line(case: str) -> None:
    text, message = BAD[case]
    with pytest.raises(WebConfigError) as info:
        parse(text)
    assert message in str(info.value) and "\n" not in str(info.value)


# Documents built from the format's own keys (and unknown ones) with values of every YAML kind.
_keys = st.sampled_from([*TOP_KEYS, *TLS_KEYS, *UNSUPPORTED, "cert_file", "x", "", "prometheus"])
_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                  st.sampled_from(["TLS12", "TLS13", "NoClientCert", "RequireAndVerifyClientCert", HASH]))
_doc = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(_keys, inner, max_size=5)), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_doc.map(lambda d: yaml.safe_dump(d)), st.text(max_size=200)))
def test_parser_fuzz_never_crashes_and_errors_are_one_line(text: str) -> None:
    try:
        cfg = parse(text, "/etc/sentinel")
    except WebConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(cfg, WebConfig)


# -- the command line ------------------------------------------------------------------------------

def test_cli_refuses_a_bad_file_with_exit_2_and_one_line(h, tmp_path: Path, pki: Pki) -> None:
    cases = {
        "unknown.yml": ("tls_server_config:\n  cert_file: x\n  key_file: y\n  ciphers: [a]\n", "unknown key"),
        "nofile.yml": (yaml.safe_dump({"tls_server_config": {"cert_file": "missing.crt", "key_file": "k"}}),
                       "no such file"),
        "mismatch.yml": (yaml.safe_dump({"tls_server_config": {"cert_file": str(pki.server_cert),
                                                               "key_file": str(pki.rogue_key)}}), "tls_server_config:"),
        "absent.yml": (None, "cannot read it"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        res = h.run([SENTINEL, "daemon", "--dir", str(tmp_path / "d"), "--web-config", str(tmp_path / name)],
                    env=h.env(), timeout=60)
        assert res.returncode == 2, (name, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"sentinel daemon: --web-config {tmp_path / name}: ")
        assert message in res.stderr, (name, res.stderr)
        assert not (tmp_path / "d").exists()  # refused before anything was made


# -- real HTTPS scrapes ----------------------------------------------------------------------------

def _daemon(h, procs: Procs, tmp_path: Path, doc: dict, context: ssl.SSLContext,
            headers: dict[str, str] | None = None) -> str:
    cfg = tmp_path / "web.yml"
    cfg.write_text(yaml.safe_dump(doc))
    port = h.free_port()
    url = f"https://127.0.0.1:{port}/metrics"
    procs.start_daemon([SENTINEL, "daemon", "--dir", h.dir, "--listen", f"127.0.0.1:{port}", "--no-nvml",
                        "--web-config", str(cfg)], tmp_path / "daemon.log", url, context=context, headers=headers,
                       env=h.env())
    return url


def _client(pki: Pki, cert: tuple[Path, Path] | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def test_https_with_basic_auth(h, procs: Procs, tmp_path: Path, pki: Pki) -> None:
    good = auth_header("prometheus", "s3cret")
    ctx = _client(pki)
    url = _daemon(h, procs, tmp_path, {"tls_server_config": _tls_doc(pki), "basic_auth_users": {"prometheus": HASH}},
                  ctx, good)
    status, body = request(url, context=ctx, headers=good)
    assert status == 200 and "sentinel_daemon_polls_total" in body
    refused = {
        "no credentials": {},
        "wrong password": auth_header("prometheus", "s3cret!"),
        "unknown user": auth_header("admin", "s3cret"),
        "not basic": {"Authorization": "Bearer s3cret"},
        "not base64": {"Authorization": "Basic !!!"},
    }
    for why, headers in refused.items():
        status, body = request(url, context=ctx, headers=headers)
        assert (status, "sentinel_" in body) == (401, False), why
    # The health endpoint answers a probe without credentials (over TLS), and says nothing more.
    health = url.replace("/metrics", "/-/healthy")
    assert request(health, context=ctx, headers={}) == (200, "OK\n")
    # Plain HTTP on the TLS port gets nothing.
    with pytest.raises(OSError):
        request(url.replace("https://", "http://"), headers=good)
    # The certificate is checked by the client: one from another CA is not trusted.
    untrusted = ssl.create_default_context(cafile=str(pki.rogue_cert))
    with pytest.raises(OSError):
        request(url, context=untrusted, headers=good)


def test_health_endpoint_follows_the_poll_loop() -> None:
    """200 while snapshots are fresh, 503 once the poll loop has stopped publishing; no auth."""
    import time

    from sentinel.daemon.snapshot import Snapshot
    from sentinel.exporter.collectors import build_registry
    from sentinel.exporter.server import HEALTHY_POLL_AGE_S, serve

    snap = [Snapshot(taken_at=time.time())]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server, _thread = serve(build_registry(lambda: snap[0]), "127.0.0.1", port, None, lambda: snap[0])
    try:
        assert request(f"http://127.0.0.1:{port}/-/healthy") == (200, "OK\n")
        snap[0] = Snapshot(taken_at=time.time() - HEALTHY_POLL_AGE_S - 1)
        status, body = request(f"http://127.0.0.1:{port}/-/healthy")
        assert status == 503 and "poll loop" in body
        status, body = request(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "sentinel_daemon_polls_total" in body
    finally:
        server.shutdown()


def test_a_stalled_client_holds_up_no_scrape(h, procs: Procs, tmp_path: Path, pki: Pki) -> None:
    ctx = _client(pki)
    url = _daemon(h, procs, tmp_path, {"tls_server_config": _tls_doc(pki)}, ctx)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # connect, never say hello
    try:
        status, _ = request(url, context=ctx, timeout=5)
        assert status == 200
    finally:
        for s in stalled:
            s.close()


def test_client_certificates_required_and_verified(h, procs: Procs, tmp_path: Path, pki: Pki) -> None:
    doc = {"tls_server_config": _tls_doc(pki, client_auth_type="RequireAndVerifyClientCert",
                                         client_ca_file=str(pki.ca), min_version="TLS13")}
    mine = _client(pki, (pki.client_cert, pki.client_key))
    url = _daemon(h, procs, tmp_path, doc, mine)
    assert request(url, context=mine)[0] == 200
    refused = {
        "no client certificate": _client(pki),
        "a certificate from another CA": _client(pki, (pki.rogue_cert, pki.rogue_key)),
        "TLS 1.2 under min_version TLS13": _client(pki, (pki.client_cert, pki.client_key), ssl.TLSVersion.TLSv1_2),
    }
    for why, ctx in refused.items():
        with pytest.raises(OSError):
            request(url, context=ctx)
            pytest.fail(why)
