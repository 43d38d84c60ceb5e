"""/metrics binds exactly where --listen says: a daemon on 127.0.0.1 is not reachable on another
local address (127.0.0.2, also loopback, or the host's own addresses), and one on 127.0.0.2 is not
reachable on 127.0.0.1. The default is loopback only."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest
from security_support import SENTINEL, Procs

from sentinel.cli.main import build_parser


def _free_port_everywhere() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _refused(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _other_addresses() -> list[str]:
    """This host's IPv4 addresses that are not loopback."""
    return sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family == socket.AF_INET and not a.address.startswith("127.")})


def test_default_listen_is_loopback() -> None:
    assert build_parser().parse_args(["daemon"]).listen == ("127.0.0.1", 9464)


@pytest.mark.parametrize(("bound", "others"), [("127.0.0.1", ["127.0.0.2"]), ("127.0.0.2", ["127.0.0.1"])])
def test_metrics_reachable_only_where_bound(h, procs: Procs, tmp_path: Path, bound: str, others: list[str]) -> None:
    port = _free_port_everywhere()
    procs.start_daemon([SENTINEL, "daemon", "--dir", h.dir, "--listen", f"{bound}:{port}", "--no-nvml"],
                       tmp_path / "daemon.log", f"http://{bound}:{port}/metrics", env=h.env())
    elsewhere = others + _other_addresses()
    assert [a for a in elsewhere if not _refused(a, port)] == []
    assert "sentinel_daemon_polls_total" in h.fetch(f"http://{bound}:{port}/metrics")
