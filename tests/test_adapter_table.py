"""The adapter list and the frameworks' plugin entry points come from one table.

``sentinel_hooks.adapters.TABLE`` is the source; ``ADAPTERS`` and ``ENTRY_POINTS`` (which
``sentinel run`` writes into its dist-info) derive from it. pyproject.toml cannot import Python,
so its ``[project.entry-points.*]`` are held equal to the table here.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from sentinel_hooks import adapters
from sentinel_hooks.adapters import ADAPTERS, ENTRY_POINT_NAME, ENTRY_POINTS, TABLE
from sentinel_hooks.adapters.base import Adapter

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport, as sentinel.triage.catalog reads TOML
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NOT_ADAPTERS = {"__init__", "base", "versions", "source"}  # the package's shared modules


def test_pyproject_entry_points_are_the_tables():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"] == ENTRY_POINTS
    assert ENTRY_POINTS == {e.group: {ENTRY_POINT_NAME: e.entry_point} for e in TABLE.values()}


def test_adapter_list_is_the_tables():
    assert ADAPTERS == {name: entry.module for name, entry in TABLE.items()}
    assert adapters.enabled({}) == list(TABLE)


def test_every_adapter_module_is_in_the_table_and_matches_it():
    on_disk = {p.stem for p in Path(adapters.__file__).parent.glob("*.py")} - NOT_ADAPTERS
    assert {entry.module.rsplit(".", 1)[1] for entry in TABLE.values()} == on_disk
    for name, entry in TABLE.items():
        module = importlib.import_module(entry.module)
        assert isinstance(module.ADAPTER, Adapter) and module.ADAPTER.name == name
        target, _, attr = entry.entry_point.partition(":")
        assert target == entry.module and callable(getattr(module, attr))
        assert "register" in module.__all__ and "ADAPTER" in module.__all__
