"""Every built-in known issue has a fixture reconstructed from its public report, and `sentinel triage`
matches that fixture, from the artifact alone, to that issue and no other.

Fixtures live in ``tests/fixtures/catalog/<project>/<issue id>.<ext>`` (several per issue:
``<issue id>.<n>.<ext>``); the README.md of each project folder lists each fixture with its source URL.
XID entries are NVIDIA's table, not issues, and have no fixture of their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from sentinel.cli.main import main
from sentinel.triage import catalog

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "catalog"
ISSUES = [i.id for i in catalog.load([]).issues]


def _fixtures(issue_id: str) -> list[Path]:
    return sorted(p for p in FIXTURES.glob(f"*/{issue_id}.*") if p.suffix != ".md"
                  and re.fullmatch(rf"{re.escape(issue_id)}(\.\d+)?\.\w+", p.name))


def _known_ids(doc: Any) -> set[str]:
    """Every known_issue id in a `sentinel triage --json` document, at any depth."""
    found = set()
    if isinstance(doc, dict):
        ki = doc.get("known_issue")
        if isinstance(ki, dict) and ki.get("id"):
            found.add(ki["id"])
        for v in doc.values():
            found |= _known_ids(v)
    elif isinstance(doc, list):
        for v in doc:
            found |= _known_ids(v)
    return found


def _triage(path: Path, tmp_path: Path) -> tuple[int, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["triage", str(path), "--json", "--dir", str(tmp_path)])
    return rc, json.loads(out.getvalue())


def test_catalog_has_at_least_25_issues() -> None:
    assert len(ISSUES) >= 25, ISSUES


@pytest.mark.parametrize("issue_id", ISSUES)
def test_every_issue_has_a_fixture_with_its_source(issue_id: str) -> None:
    found = _fixtures(issue_id)
    assert found, f"no fixture tests/fixtures/catalog/*/{issue_id}.*"
    for path in found:
        readme = (path.parent / "README.md").read_text()
        row = next((ln for ln in readme.splitlines() if path.name in ln), "")
        assert re.search(r"https://\S+", row), f"{path.parent.name}/README.md: no source URL on {path.name}'s row"


@pytest.mark.parametrize("path", [p for i in ISSUES for p in _fixtures(i)], ids=lambda p: p.name)
def test_triage_matches_the_fixture_to_its_issue(path: Path, tmp_path: Path) -> None:
    issue_id = path.name.split(".")[0]
    rc, doc = _triage(path, tmp_path)
    assert rc == 0, doc
    assert _known_ids(doc) == {issue_id}
