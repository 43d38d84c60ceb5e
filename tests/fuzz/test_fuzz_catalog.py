"""Hostile known-issue catalogs (TOML): generated documents with one known defect each, arbitrary
TOML values, mutations of the built-in catalog, random text and bytes. ``catalog.parse`` returns a
catalog that matching can use, or raises CatalogError naming the file; nothing else escapes."""

from __future__ import annotations

import datetime
import json
import math
import random

import pytest
from fuzz_support import count, fuzz, mutate
from hypothesis import example
from hypothesis import strategies as st

from sentinel.triage import catalog

SOURCE = "fuzz.toml"
BUILTIN = b"\n".join(open(p, "rb").read() for p in catalog.builtin_files())


def toml(value: object) -> str:
    """A TOML value (inline tables and arrays: the same data as [[issue]] sections)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML escapes DEL too
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml(str(k))} = {toml(v)}" for k, v in value.items()) + "}"


def document(doc: dict) -> str:
    return "".join(f"{toml(str(k))} = {toml(v)}\n" for k, v in doc.items())


def check_catalog(data: bytes | str) -> catalog.Catalog | None:
    """Parse; an accepted catalog must match any fault without an error."""
    try:
        cat = catalog.parse(data, SOURCE)
    except catalog.CatalogError as exc:
        assert str(exc).startswith(SOURCE + ":") and "\n" not in str(exc).strip(), str(exc)
        return None
    for issue in cat.issues:
        assert isinstance(issue.id, str) and issue.id and issue.conditions() > 0
    cat.match("illegal_address", "fmhaSm100fKernel", {"page_table_oob", "xid_79"})
    cat.match("", "", set())
    for code in list(cat.xids)[:3] + [0, -1, 10**30]:
        assert cat.xid(code).name
    return cat


# -- generated documents with one defect -----------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
WORDS = st.lists(TEXT, max_size=3)


@st.composite
def issues(draw: st.DrawFn, ident: str) -> dict:
    match = {}
    for key, strat in (("exception", WORDS), ("kernel", st.sampled_from(["fmha", "^at::native::", "gather|scatter",
                                                                         "(?i)paged_.*"])),
                       ("evidence", WORDS), ("evidence_any", WORDS),
                       ("text", st.sampled_from(["illegal memory", "^RuntimeError", "NCCL WARN .*"]))):
        if draw(st.booleans()):
            match[key] = draw(strat)
    if not any(match.get(k) for k in match):
        match["kernel"] = "fallback"  # at least one condition
    issue = {"id": ident, "match": match}
    for key in draw(st.lists(st.sampled_from(["title", "seed", "root_cause", "remediation", "reference", "runbook"]),
                             unique=True)):
        issue[key] = draw(TEXT)
    return issue


DEFECTS = {
    "unknown_section": lambda d: d.update(what=[{"x": 1}]),
    "issue_table": lambda d: d.update(issue={"id": "x"}),
    "issue_not_table": lambda d: d["issue"].append(3),
    "no_id": lambda d: d["issue"][0].pop("id"),
    "empty_id": lambda d: d["issue"][0].update(id=""),
    "int_id": lambda d: d["issue"][0].update(id=7),
    "duplicate_id": lambda d: d["issue"].append(dict(d["issue"][0])),
    "unknown_key": lambda d: d["issue"][0].update(bogus=1),
    "match_key": lambda d: d["issue"][0]["match"].update(colour="red"),
    "match_not_table": lambda d: d["issue"][0].update(match="kernel"),
    "bad_regex": lambda d: d["issue"][0]["match"].update(kernel="(unclosed"),
    "deep_regex": lambda d: d["issue"][0]["match"].update(kernel="(" * 2000 + ")" * 2000),  # RecursionError
    "huge_repeat": lambda d: d["issue"][0]["match"].update(kernel="a{99999999999999999999}"),  # OverflowError
    "text_type": lambda d: d["issue"][0].update(title=["a"]),
    "date_text": lambda d: d["issue"][0].update(root_cause=datetime.date(2024, 1, 1)),
    "strs_type": lambda d: d["issue"][0]["match"].update(exception=[1]),
    "no_condition": lambda d: d["issue"][0].update(match={}),
    "xid_code": lambda d: d["xid"].append({"code": "79"}),
    "xid_severity": lambda d: d["xid"].append({"code": 79, "severity": "meh"}),
    "xid_not_list": lambda d: d.update(xid={"code": 79}),
    "xid_name_type": lambda d: d["xid"].append({"code": 79, "name": 3}),
}


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, str | None, list[str]]:
    ids = draw(st.lists(TEXT.filter(bool), min_size=1, max_size=4, unique=True))
    doc = {"issue": [draw(issues(i)) for i in ids],
           "xid": [{"code": draw(st.integers(-(2**63), 2**63 - 1)), "name": draw(TEXT),
                    "severity": draw(st.sampled_from(["critical", "warning", "info"]))}
                   for _ in range(draw(st.integers(0, 2)))]}
    defect = draw(st.one_of(st.none(), st.sampled_from(sorted(DEFECTS))))
    if defect:
        DEFECTS[defect](doc)
    return document(doc), defect, ids


@example((document({"issue": [{"id": "x", "match": {"kernel": "(" * 2000 + ")" * 2000}}]}), "deep_regex", ["x"]))
@example((document({"issue": [{"id": "x", "match": {"kernel": "a{99999999999999999999}"}}]}), "huge_repeat", ["x"]))
def _generated(case: tuple[str, str | None, list[str]]) -> None:
    text, defect, ids = case
    cat = check_catalog(text)
    if defect is None:
        assert cat is not None and [i.id for i in cat.issues] == ids
    else:
        assert cat is None, defect


test_generated_documents, test_generated_documents_long = fuzz(
    "catalog", documents(), ci=300, long=10_000)(_generated)

# -- anything TOML can hold ----------------------------------------------------------------------------------

VALUES = st.recursive(
    st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), TEXT, st.dates(), st.times(),
              st.datetimes()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=25)
KEYS = st.one_of(st.sampled_from(["issue", "xid", "id", "match", "kernel", "code"]), TEXT)


def _any_toml(doc: dict) -> None:
    check_catalog(document(doc))


test_any_toml, test_any_toml_long = fuzz(
    "catalog", st.dictionaries(KEYS, VALUES, max_size=4).map(
        lambda d: {"issue": [d]} if "id" in d else d), ci=300, long=10_000)(_any_toml)


@example("a = " + "[" * 5000 + "]" * 5000)  # tomllib recursed: RecursionError, not CatalogError
@example("a = " + "{b = " * 3000 + "1" + "}" * 3000)
@example(BUILTIN[:2000] + b"\xff\xfe")  # not UTF-8
def _text(data: str | bytes) -> None:
    check_catalog(data)


test_random_text, test_random_text_long = fuzz("catalog", st.one_of(st.text(max_size=500), st.binary(max_size=500)),
                                               ci=500, long=20_000)(_text)


def _mutations(n: int, seed: int) -> None:
    """Seeded byte mutations of the built-in catalog and of its single entries."""
    rng = random.Random(seed)
    entries = [b"[[issue]]" + e for e in BUILTIN.split(b"[[issue]]")[1:]]
    accepted = 0
    for _ in range(n):
        base = BUILTIN if rng.random() < 0.1 else rng.choice(entries)
        accepted += check_catalog(mutate(base, rng, max_ops=4)) is not None
    count("catalog", n)
    assert 0 < accepted < n


def test_catalog_mutations() -> None:
    _mutations(2_000, seed=31)


@pytest.mark.slow
def test_catalog_mutations_long() -> None:
    _mutations(200_000, seed=32)
