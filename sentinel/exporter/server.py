"""Serving /metrics: prometheus_client's WSGI app, with ``--web-config``'s TLS and basic auth
(``webconfig``), and ``GET /-/healthy`` for the liveness probe."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from sentinel.daemon.snapshot import Snapshot

if TYPE_CHECKING:
    from sentinel.exporter.webconfig import WebConfig

__all__ = ["HEALTH_PATH", "HEALTHY_POLL_AGE_S", "serve"]

HEALTH_PATH = "/-/healthy"  # Prometheus's own name for it
HEALTHY_POLL_AGE_S = 30.0  # the poll loop is stuck if its last snapshot is older than this


def serve(registry: CollectorRegistry, host: str, port: int, web_config: WebConfig | None = None,
          snapshot: Callable[[], Snapshot] | None = None) -> tuple:
    """Serve /metrics on host:port in a background thread. Returns (server, thread).

    With a web config (``--web-config``): its TLS and basic auth (see sentinel/exporter/webconfig.py).
    ``GET /-/healthy`` answers without authentication (a probe carries no credentials): 200 while
    the daemon's poll loop runs (``snapshot()`` taken in the last HEALTHY_POLL_AGE_S seconds),
    503 otherwise; it says nothing else. Every other path is /metrics. Raises OSError if the port
    cannot be bound."""
    from prometheus_client import make_wsgi_app

    from sentinel.exporter.webconfig import WebConfig
    from sentinel.exporter.webconfig import serve as serve_with

    def healthy(environ: dict, start_response: Callable) -> list[bytes]:
        age = time.time() - snapshot().taken_at if snapshot is not None else 0.0
        ok = age < HEALTHY_POLL_AGE_S
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"OK\n" if ok else b"the poll loop is not running\n"]

    return serve_with(make_wsgi_app(registry), host, port, web_config or WebConfig(), unauthenticated={HEALTH_PATH: healthy})
