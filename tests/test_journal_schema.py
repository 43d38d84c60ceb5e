"""The journal's schema version is checked on open: a journal written by a newer Sentinel is refused
with one clear line, and left as it was, instead of being misread or migrated backwards."""

from __future__ import annotations

import sqlite3

import pytest

from sentinel.daemon.journal import SCHEMA_VERSION, Journal, JournalError
from sentinel_hooks.layout import journal_path


def _set_version(path: str, value: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (value,))
    db.close()


def _version(path: str) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
    finally:
        db.close()


def test_a_new_journal_records_its_version_and_reopens(h) -> None:  # noqa: ANN001
    path = journal_path(h.dir)
    Journal(path).close()
    assert _version(path) == SCHEMA_VERSION
    Journal(path).close()  # its own version: fine


@pytest.mark.parametrize(("value", "words"), [(str(int(SCHEMA_VERSION) + 1), "newer"), ("two", "not a version")])
def test_a_journal_this_version_cannot_read_is_refused_and_left_alone(h, value: str, words: str) -> None:  # noqa: ANN001
    path = journal_path(h.dir)
    Journal(path).close()
    _set_version(path, value)
    with pytest.raises(JournalError, match=words):
        Journal(path)
    assert _version(path) == value  # not overwritten with this version's

    # The daemon does not start (one line, exit 2); triage says why (one line, exit 2).
    res = h.run([h.sentinel, "daemon", "--dir", h.dir, "--listen", "127.0.0.1:0", "--no-nvml"], env=h.env())
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in res.stderr, res.stderr
    res = h.run([h.sentinel, "triage", "--list", "--dir", h.dir], env=h.env())
    assert res.returncode == 2 and res.stderr.startswith("sentinel triage: ") and words in res.stderr, res.stderr
    assert _version(path) == value
