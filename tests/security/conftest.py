"""Fixtures of tests/security: other users, TLS material made with the real openssl, a process reaper."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from security_support import IS_ROOT, Pki, Procs, Users, make_pki


@pytest.fixture(scope="session")
def users() -> Iterator[Users]:
    """Run commands as the test uids/gids (skips without root)."""
    if not IS_ROOT:
        pytest.skip("runs children as other users: needs root")
    u = Users()
    try:
        yield u
    finally:
        u.close()


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and a rogue CA's client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))
