"""Stage 5: the daemon's snapshot -> Prometheus exposition on /metrics (plain HTTP, or TLS and basic
auth with ``--web-config``)."""

__all__ = []
