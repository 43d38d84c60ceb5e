"""TLS and basic auth for /metrics: ``sentinel daemon --web-config FILE``.

FILE uses the Prometheus exporter-toolkit web-config format, the file node_exporter and Prometheus
itself take, restricted to what is implemented here:

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to FILE's folder
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # NoClientCert (default) | VerifyClientCertIfGiven
      client_ca_file: ca.crt           # required with the two Verify* types, refused without
      min_version: TLS12               # TLS10 | TLS11 | TLS12 (default) | TLS13
      max_version: TLS13               # optional
    basic_auth_users:                  # user: bcrypt hash (htpasswd -nbB USER PASSWORD)
      prometheus: $2y$10$...

What prometheus_client does, it does here too: its WSGI app (``make_wsgi_app``) and its threaded
server class (``ThreadingWSGIServer``) serve every request. Its own TLS option
(``start_wsgi_server(certfile=, keyfile=, client_cafile=, client_auth_required=, tls_min_version=)``)
is not enough for a web config, and this module adds only what it lacks:

- **basic auth** (``basic_auth_users``): a check in front of the app, bcrypt hashes, 401 otherwise;
- **optional client certificates** (``VerifyClientCertIfGiven``): the library verifies a client
  certificate always or never;
- **the handshake off the accept thread**: the library wraps the listening socket, so each TLS
  handshake runs in ``accept()`` on the one serving thread, and a client that connects and stalls
  holds up every scrape. Here the handshake runs in the connection's own thread, with a timeout;
- an unauthenticated path (``/-/healthy``) next to the authenticated /metrics.

The SSL context is built with the standard library's calls (the ones the library makes in its own,
private helper), so that each bad file or version is refused at start-up with a one-line error.

Every other key is refused with a one-line error, the exporter-toolkit keys not implemented here
included (``cipher_suites``, ``http_server_config``, ...): a setting silently ignored would be a
hole in what the operator believes is protected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

__all__ = [
    "MAX_FILE_BYTES", "TLS_VERSIONS", "CLIENT_AUTH", "UNSUPPORTED", "TOP_KEYS", "TLS_KEYS", "BCRYPT_HASH",
    "HANDLER_TIMEOUT_S", "WebConfigError", "TLSConfig", "WebConfig", "parse", "load", "ssl_context", "BasicAuth",
    "require_basic_auth", "serve",
]

log = logging.getLogger("sentinel.webconfig")

MAX_FILE_BYTES = 1 << 20
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit keys this implementation does not have, and why it refuses them.
UNSUPPORTED = {
    "http_server_config": "HTTP/2 and response headers are not configurable here",
    "rate_limit": "rate limiting is not implemented",
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
    "client_ca": "an inline client CA is not supported; use client_ca_file",
    "cipher_suites": "cipher suites are not configurable here (the Python ssl defaults apply)",
    "curve_preferences": "curves are not configurable here",
    "prefer_server_cipher_suites": "cipher preference is not configurable here",
    "client_allowed_sans": "client SAN allow-lists are not implemented",
    "RequestClientCert": "Python's ssl verifies every client certificate it asks for",
    "RequireAnyClientCert": "Python's ssl verifies every client certificate it asks for",
}
TOP_KEYS = ("tls_server_config", "basic_auth_users")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")
HANDLER_TIMEOUT_S = 10.0


class WebConfigError(ValueError):
    """A web-config file that cannot be used; the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class TLSConfig:
    """A checked ``tls_server_config``: file paths resolved against the web-config file's folder, the
    client-certificate mode and the TLS version bounds as ``ssl`` values (``max_version`` None: no
    upper bound)."""

    cert_file: str
    key_file: str
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None


@dataclass(frozen=True)
class WebConfig:
    """A parsed web-config file: its TLS settings (None: plain HTTP) and the basic-auth users (user ->
    bcrypt hash; empty: no auth)."""

    tls: TLSConfig | None = None
    users: dict[str, str] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


# -- parsing -------------------------------------------------------------------------------------

def _check_keys(section: str, doc: dict, known: Iterable[str]) -> None:
    for key in doc:
        if not isinstance(key, str):
            raise WebConfigError(f"{section}: keys must be strings, got {key!r}")
        if key in known:
            continue
        where = f"{section}.{key}" if section else key
        if key in UNSUPPORTED:
            raise WebConfigError(f"{where} is not supported by sentinel: {UNSUPPORTED[key]}")
        raise WebConfigError(f"unknown key {where!r}; known: {', '.join(known)}")


def _path(section: str, key: str, value: Any, base_dir: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WebConfigError(f"{section}.{key} must be a file path, got {value!r}")
    if "\0" in value:
        raise WebConfigError(f"{section}.{key} contains a NUL byte")
    return os.path.normpath(os.path.join(base_dir, value))


def _version(key: str, value: Any) -> ssl.TLSVersion:
    if not isinstance(value, str) or value not in TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key} must be one of {', '.join(TLS_VERSIONS)}, got {value!r}")
    return TLS_VERSIONS[value]


def _parse_tls(doc: Any, base_dir: str) -> TLSConfig | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise WebConfigError(f"tls_server_config must be a mapping, got {type(doc).__name__}")
    _check_keys("tls_server_config", doc, TLS_KEYS)
    for key in ("cert_file", "key_file"):
        if key not in doc:
            raise WebConfigError(f"tls_server_config.{key} is required")
    auth_name = doc.get("client_auth_type", "NoClientCert")
    if not isinstance(auth_name, str):
        raise WebConfigError(f"tls_server_config.client_auth_type must be one of {', '.join(CLIENT_AUTH)}, "
                             f"got {auth_name!r}")
    if auth_name in UNSUPPORTED:
        raise WebConfigError(f"tls_server_config.client_auth_type {auth_name} is not supported by sentinel: "
                             f"{UNSUPPORTED[auth_name]}; use VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    if auth_name not in CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type must be one of {', '.join(CLIENT_AUTH)}, "
                             f"got {auth_name!r}")
    auth = CLIENT_AUTH[auth_name]
    ca = doc.get("client_ca_file")
    if ca is not None:
        ca = _path("tls_server_config", "client_ca_file", ca, base_dir)
    if auth != ssl.CERT_NONE and ca is None:
        raise WebConfigError(f"tls_server_config.client_ca_file is required with client_auth_type {auth_name}")
    if auth == ssl.CERT_NONE and ca is not None:
        raise WebConfigError("tls_server_config.client_ca_file is set but client_auth_type is NoClientCert: "
                             "set client_auth_type to VerifyClientCertIfGiven or RequireAndVerifyClientCert")
    low = _version("min_version", doc.get("min_version", "TLS12"))
    high = _version("max_version", doc["max_version"]) if doc.get("max_version") is not None else None
    if high is not None and high < low:
        raise WebConfigError("tls_server_config.max_version is below min_version")
    return TLSConfig(cert_file=_path("tls_server_config", "cert_file", doc["cert_file"], base_dir),
                     key_file=_path("tls_server_config", "key_file", doc["key_file"], base_dir),
                     client_auth=auth, client_ca_file=ca, min_version=low, max_version=high)


def _parse_users(doc: Any) -> dict[str, str]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise WebConfigError(f"basic_auth_users must be a mapping of user: bcrypt hash, got {type(doc).__name__}")
    users = {}
    for user, hashed in doc.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError(f"basic_auth_users: {user!r} is not a valid user name (a non-empty string without ':')")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            raise WebConfigError(f"basic_auth_users: the password of {user!r} is not a bcrypt hash "
                                 "(make one with: htpasswd -nbB USER PASSWORD)")
        users[user] = hashed
    return users


def parse(text: str, base_dir: str = ".") -> WebConfig:
    """Parse a web-config document. Raises WebConfigError (one line) for anything unusable."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except Exception as exc:  # YAMLError, and the odd constructor error (a bad timestamp, deep nesting)
        raise WebConfigError(f"not valid YAML: {exc}") from None
    if doc is None:
        return WebConfig()  # an empty file: plain HTTP, no auth (as in exporter-toolkit)
    if not isinstance(doc, dict):
        raise WebConfigError(f"expected a mapping with {' / '.join(TOP_KEYS)}, got {type(doc).__name__}")
    _check_keys("", doc, TOP_KEYS)
    return WebConfig(tls=_parse_tls(doc.get("tls_server_config"), base_dir),
                     users=_parse_users(doc.get("basic_auth_users")))


def load(path: str) -> WebConfig:
    """Read, parse and check a web-config file: the certificate, key and CA must load."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WebConfigError(f"cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise WebConfigError(f"larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WebConfigError("not UTF-8 text") from None
    cfg = parse(text, os.path.dirname(os.path.abspath(path)))
    if cfg.tls is not None:
        ssl_context(cfg.tls)  # fail now, with a clear line, rather than at the first scrape
    return cfg


# -- serving -------------------------------------------------------------------------------------

def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The server's SSL context (the standard library's, as prometheus_client builds it for its own
    TLS option). Raises WebConfigError."""
    for key, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file), ("client_ca_file", tls.client_ca_file)):
        if path is not None and not os.path.isfile(path):
            raise WebConfigError(f"tls_server_config.{key}: no such file: {path}")
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        ctx.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise WebConfigError(f"tls_server_config: {exc}") from None
    ctx.verify_mode = tls.client_auth
    try:
        ctx.minimum_version = tls.min_version
        if tls.max_version is not None:
            ctx.maximum_version = tls.max_version
    except ValueError as exc:
        raise WebConfigError(f"tls_server_config: {exc}") from None
    return ctx


class BasicAuth:
    """Checks an ``Authorization: Basic`` header against bcrypt hashes. A verified (user, password)
    is remembered (as a digest) so that Prometheus's scrapes do not pay bcrypt's cost each time."""

    CACHE_MAX = 1024

    def __init__(self, users: dict[str, str]) -> None:
        import bcrypt

        self._bcrypt = bcrypt
        self.users = {u: h.encode("ascii") for u, h in users.items()}
        self._decoy = next(iter(self.users.values()), None)  # unknown users cost a bcrypt check too
        self._verified: set[bytes] = set()

    def check(self, header: str | None) -> bool:
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        if not sep:
            return False
        hashed = self.users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(), hashed or b""))).digest()
        if hashed is not None and key in self._verified:
            return True
        against = hashed or self._decoy
        try:
            ok = against is not None and self._bcrypt.checkpw(password.encode(), against)
        except ValueError:
            ok = False
        if ok and hashed is not None:
            if len(self._verified) >= self.CACHE_MAX:
                self._verified.clear()
            self._verified.add(key)
            return True
        return False


def require_basic_auth(app: Callable, auth: BasicAuth) -> Callable:
    """A WSGI app that answers 401 unless the request carries valid basic-auth credentials."""

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if auth.check(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Basic realm="sentinel"')])
        return [b"Unauthorized\n"]

    return guarded


def _route(default: Callable, paths: dict[str, Callable]) -> Callable:
    def route(environ: dict, start_response: Callable) -> Iterable[bytes]:
        return paths.get(environ.get("PATH_INFO", ""), default)(environ, start_response)

    return route


class _Handler(WSGIRequestHandler):
    # A client that stalls (in the TLS handshake too) ties up only its own thread, and only this long.
    timeout = HANDLER_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # no line per scrape


def serve(app: Callable, host: str, port: int, cfg: WebConfig, unauthenticated: dict[str, Callable] | None = None) -> tuple:
    """Serve ``app`` on host:port with ``cfg``'s TLS and basic auth, from a daemon thread; the paths in
    ``unauthenticated`` go to their own app, without basic auth (TLS still applies).
    Returns (server, thread), like prometheus_client's start_http_server."""
    from prometheus_client.exposition import ThreadingWSGIServer

    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A failed handshake, wrong protocol or a client gone: not worth a traceback.
            log.debug("metrics connection failed", extra={"client": str(client_address)})

    if cfg.users:
        app = require_basic_auth(app, BasicAuth(cfg.users))
    if unauthenticated:
        app = _route(app, unauthenticated)
    httpd = make_server(sockaddr[0], port, app, Server, handler_class=_Handler)
    if cfg.tls is not None:
        ctx = ssl_context(cfg.tls)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=httpd.serve_forever, name="sentinel-metrics", daemon=True)
    thread.start()
    return httpd, thread
