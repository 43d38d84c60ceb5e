"""The known-issue catalog: evidence -> root cause, remediation, upstream reference.

Built-in entries live in the TOML files of sentinel/triage/data/catalog/ (its README.md documents the
format). Users extend them with their own TOML file (same format); an entry with the same id replaces
the built-in one. A bad file is rejected with a message naming the file and the entry, never
half-loaded.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BUILTIN", "builtin_files", "ISSUE_KEYS", "MATCH_KEYS", "CatalogError", "KnownIssue", "XidInfo", "Catalog", "parse", "load",
]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "catalog")  # a folder of *.toml
ISSUE_KEYS = {"id", "title", "seed", "root_cause", "remediation", "reference", "runbook", "match"}
MATCH_KEYS = {"exception", "kernel", "evidence", "evidence_any", "text"}


class CatalogError(ValueError):
    """A catalog file that cannot be used (not TOML, an unknown key, a wrong type, a bad regex, a
    match with no condition); the message names the file and the entry."""

    pass


@dataclass(frozen=True)
class KnownIssue:
    """One ``[[issue]]`` of a catalog: the text on-call sees and its match conditions, all of which
    must hold: ``exception`` (any of these classes), ``kernel`` (a case-insensitive regex searched in
    the kernel family), ``evidence`` (all of these keys), ``evidence_any`` (at least one), ``text`` (a
    case-insensitive regex searched in the record's text: its exception, kernel, frame and log lines)."""

    id: str
    title: str
    root_cause: str = ""
    remediation: str = ""
    reference: str = ""
    runbook: str = ""
    seed: str = ""
    exception: tuple[str, ...] = ()
    kernel: re.Pattern | None = None
    evidence: tuple[str, ...] = ()
    evidence_any: tuple[str, ...] = ()
    text: re.Pattern | None = None

    def conditions(self) -> int:
        return (bool(self.exception) + bool(self.kernel) + len(self.evidence) + bool(self.evidence_any)
                + bool(self.text))

    def matches(self, exception_class: str, kernel_family: str, evidence: set[str], text: str = "") -> bool:
        if self.exception and exception_class not in self.exception:
            return False
        if self.kernel is not None and not self.kernel.search(kernel_family or ""):
            return False
        if any(e not in evidence for e in self.evidence):
            return False
        if self.evidence_any and not any(e in evidence for e in self.evidence_any):
            return False
        if self.text is not None and not self.text.search(text or ""):
            return False
        return self.conditions() > 0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "root_cause": self.root_cause, "remediation": self.remediation,
                "reference": self.reference, "runbook": self.runbook, "seed": self.seed}


@dataclass(frozen=True)
class XidInfo:
    """One ``[[xid]]`` of a catalog: an NVIDIA XID code's name, severity (critical, warning or info),
    meaning and action."""

    code: int
    name: str
    severity: str = "critical"
    meaning: str = ""
    action: str = ""


@dataclass
class Catalog:
    """Known issues and XIDs, from the built-in catalog.toml and the users' files (``load``).
    ``match`` gives the matching issue with the most conditions (the first among equals), ``xid`` a
    placeholder (severity warning) for a code not in the catalog."""

    issues: list[KnownIssue] = field(default_factory=list)
    xids: dict[int, XidInfo] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def match(self, exception_class: str, kernel_family: str, evidence: set[str], text: str = "") -> KnownIssue | None:
        """The matching issue with the most conditions; ``text`` is the record's text (see KnownIssue)."""
        best = None
        for issue in self.issues:
            if issue.matches(exception_class, kernel_family, evidence, text) and (
                best is None or issue.conditions() > best.conditions()
            ):
                best = issue
        return best

    def xid(self, code: int) -> XidInfo:
        return self.xids.get(code) or XidInfo(code, f"XID {code}", "warning", "Not in the catalog.", "See NVIDIA's XID list.")


def _text(value: Any, where: str, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CatalogError(f"{where}: {key} must be a string")
    return value


def _strs(value: Any, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{where}: {key} must be a string or a list of strings")
    return tuple(value)


def _regex(match: dict, key: str, where: str) -> re.Pattern | None:
    if key not in match:
        return None
    try:
        return re.compile(_text(match[key], where, f"match.{key}"), re.I)
    except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}, ((((...
        raise CatalogError(f"{where}: match.{key} is not a valid regex: {exc}") from None


def parse(data: bytes | str, source: str = "<catalog>") -> Catalog:
    """Parse and validate one catalog document. Raises CatalogError with a clear message."""
    try:
        doc = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses per nested array or inline table
        raise CatalogError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None
    cat = Catalog(sources=[source])
    unknown_top = set(doc) - {"issue", "xid"}
    if unknown_top:
        raise CatalogError(f"{source}: unknown sections {sorted(unknown_top)} (expected [[issue]] and [[xid]])")
    issues = doc.get("issue", [])
    if not isinstance(issues, list):
        raise CatalogError(f"{source}: 'issue' must be an array of tables ([[issue]])")
    seen = set()
    for i, entry in enumerate(issues):
        where = f"{source}: issue #{i + 1}"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: must be a table")
        if "id" not in entry or not isinstance(entry["id"], str) or not entry["id"]:
            raise CatalogError(f"{where}: needs a non-empty string id")
        where = f"{source}: issue {entry['id']!r}"
        if entry["id"] in seen:
            raise CatalogError(f"{where}: duplicate id")
        seen.add(entry["id"])
        extra = set(entry) - ISSUE_KEYS
        if extra:
            raise CatalogError(f"{where}: unknown keys {sorted(extra)}")
        match = entry.get("match", {})
        if not isinstance(match, dict) or set(match) - MATCH_KEYS:
            raise CatalogError(f"{where}: [issue.match] may only hold {sorted(MATCH_KEYS)}")
        kernel, text = (_regex(match, key, where) for key in ("kernel", "text"))
        issue = KnownIssue(
            id=entry["id"], title=_text(entry.get("title"), where, "title") or entry["id"],
            root_cause=_text(entry.get("root_cause"), where, "root_cause"),
            remediation=_text(entry.get("remediation"), where, "remediation"),
            reference=_text(entry.get("reference"), where, "reference"),
            runbook=_text(entry.get("runbook"), where, "runbook"), seed=_text(entry.get("seed"), where, "seed"),
            exception=_strs(match.get("exception"), where, "match.exception"), kernel=kernel,
            evidence=_strs(match.get("evidence"), where, "match.evidence"),
            evidence_any=_strs(match.get("evidence_any"), where, "match.evidence_any"), text=text,
        )
        if issue.conditions() == 0:
            raise CatalogError(f"{where}: [issue.match] has no condition; it would match every fault")
        cat.issues.append(issue)
    xids = doc.get("xid", [])
    if not isinstance(xids, list):
        raise CatalogError(f"{source}: 'xid' must be an array of tables ([[xid]])")
    for i, entry in enumerate(xids):
        where = f"{source}: xid #{i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("code"), int):
            raise CatalogError(f"{where}: needs an integer code")
        sev = entry.get("severity", "critical")
        if sev not in ("critical", "warning", "info"):
            raise CatalogError(f"{where}: severity must be critical, warning or info")
        cat.xids[entry["code"]] = XidInfo(entry["code"], _text(entry.get("name"), where, "name") or f"XID {entry['code']}",
                                          sev, _text(entry.get("meaning"), where, "meaning"),
                                          _text(entry.get("action"), where, "action"))
    return cat


def builtin_files() -> list[str]:
    """The built-in catalog's files (``BUILTIN/*.toml``), in name order."""
    return sorted(os.path.join(BUILTIN, n) for n in os.listdir(BUILTIN) if n.endswith(".toml"))


def load(extra: list[str] | None = None) -> Catalog:
    """The built-in catalog, extended by ``extra`` files in order (later entries replace earlier).
    Raises CatalogError for a bad file, or an id two built-in files both define; OSError for a file
    that cannot be read."""
    cat = Catalog()
    for path in builtin_files():
        with open(path, "rb") as f:
            part = parse(f.read(), path)
        twice = {i.id for i in cat.issues} & {i.id for i in part.issues}
        if twice:
            raise CatalogError(f"{path}: ids already defined by another built-in file: {sorted(twice)}")
        cat.issues += part.issues
        cat.xids.update(part.xids)
        cat.sources.append(path)
    for path in extra or []:
        with open(path, "rb") as f:
            more = parse(f.read(), path)
        ids = {i.id for i in more.issues}
        cat.issues = [i for i in cat.issues if i.id not in ids] + more.issues
        cat.xids.update(more.xids)
        cat.sources.append(path)
    return cat
