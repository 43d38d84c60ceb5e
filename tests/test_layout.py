"""The house rules of the code base, checked: stages as folders with imports pointing down the flow,
no import circle, no torch in the sidecar's daemon, triage, exporter or CLI, the ring format
importable alone, every SENTINEL_* variable declared once, and a README whose layout section
lists exactly the modules there are."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sentinel_hooks import env, ringformat

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"sentinel": ROOT / "sentinel", "sentinel_hooks": ROOT / "hooks" / "sentinel_hooks"}


def _modules() -> dict[str, Path]:
    """Every module of both packages: dotted name -> file."""
    out = {}
    for pkg, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports, at any depth of its code (a function-level import is a
    dependency too), except under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = here
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # A module's own package (its parent) is loaded first by Python anyway: not an edge of its own.
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_checker_sees_imports_and_finds_a_circle() -> None:
    # Not vacuous: a known edge, a function-level import, and a made-up circle.
    assert "sentinel_hooks.ringformat" in GRAPH["sentinel_hooks.writer"]
    assert "sentinel_hooks.inject" in GRAPH["sentinel_hooks.adapters.base"]  # inside register_plugin()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle() -> None:
    assert _cycles(GRAPH) == []


# Which stage may import which (imports point down the flow). The hooks import nothing of the sidecar.
MAY_IMPORT = {
    "sentinel.triage": {"sentinel.triage", "sentinel_hooks"},
    "sentinel.daemon": {"sentinel.daemon", "sentinel.triage", "sentinel_hooks"},
    "sentinel.exporter": {"sentinel.exporter", "sentinel.daemon", "sentinel", "sentinel_hooks"},
    "sentinel_hooks": {"sentinel_hooks"},
}


@pytest.mark.parametrize("stage", sorted(MAY_IMPORT))
def test_imports_point_down_the_flow(stage: str) -> None:
    allowed = MAY_IMPORT[stage]
    wrong = {}
    for name, deps in GRAPH.items():
        if name == stage or name.startswith(stage + "."):
            bad = {d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed if a != "sentinel")
                   and not ("sentinel" in allowed and d == "sentinel")}
            if bad:
                wrong[name] = sorted(bad)
    assert wrong == {}


def _loaded_after(code: str) -> dict:
    probe = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    res = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return set(json.loads(res.stdout.splitlines()[-1]))


SIDECAR_STAGES = ("sentinel.daemon", "sentinel.triage", "sentinel.exporter", "sentinel.cli")


def test_daemon_triage_exporter_and_cli_import_no_torch() -> None:
    """Every module of those packages, imported together in a fresh interpreter: no torch, no
    framework (the demo's workloads are the only sidecar code that may import torch)."""
    names = [m for m in MODULES if m.startswith(SIDECAR_STAGES)]
    assert len(names) > 30  # all of them, not a few
    loaded = _loaded_after("".join(f"import {m}\n" for m in names))
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "vllm", "sglang", "triton")}


def test_the_ring_format_imports_nothing_else_of_the_hooks() -> None:
    loaded = _loaded_after("import sentinel_hooks.ringformat")
    assert {m for m in loaded if m.startswith("sentinel_hooks")} == {"sentinel_hooks", "sentinel_hooks.ringformat"}


def test_every_module_imports_alone() -> None:
    """Each module in a fresh interpreter of its own (an import order that only works when another
    module was imported first is a hidden circle). The Triton kernel needs Triton (GPU machines)."""
    needs_triton = {"sentinel_hooks.kernels", "sentinel.demo.cuda_fault"}
    skip = needs_triton | {"sentinel.__main__"}
    failed = {}
    for name in sorted(set(MODULES) - skip):
        res = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
        if res.returncode:
            failed[name] = res.stderr.strip().splitlines()[-1:]
    assert failed == {}


# -- one definition of each fact -------------------------------------------------------------------

_SENTINEL_VAR = re.compile(r"\bSENTINEL_[A-Z][A-Z0-9_]*\b")


def test_every_sentinel_variable_is_declared_once_and_read_through_env() -> None:
    """Every SENTINEL_* name the code mentions is declared in env.py (SENTINEL_TEST_* are the test
    plugins' own), and no module but env.py reads one from the environment by hand."""
    declared = {v.name for v in env.VARS}
    assert len(declared) == len(env.VARS)
    mentioned, by_hand = set(), []
    reads = re.compile(r"(environ|env)(\.get\(|\[)\s*[\"']SENTINEL_(?!TEST_)|getenv\(\s*[\"']SENTINEL_(?!TEST_)")
    for name, path in MODULES.items():
        text = path.read_text()
        mentioned |= {m for m in _SENTINEL_VAR.findall(text) if not m.startswith("SENTINEL_TEST_")}
        if name != "sentinel_hooks.env" and reads.search(text):
            by_hand.append(name)
    assert mentioned <= declared, sorted(mentioned - declared)
    assert by_hand == []


def test_every_sentinel_variable_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert [v.name for v in env.VARS if f"`{v.name}`" not in readme] == []


def test_bad_values_are_reported_the_same_way_for_every_variable() -> None:
    """A refused value gives the default (or the declared fallback) and one message naming the
    variable, whatever its kind; a good one gives no message."""
    bad = {"flag": "maybe", "int": "many", "choice": "nope", "names": "nope", "octal": "9x"}
    for var in env.VARS:
        if var.kind == "text":
            assert var.read({var.name: "x"}).problem is None
            continue
        r = var.read({var.name: bad[var.kind]})
        assert r.problem and r.problem.startswith(f"{var.name}="), var.name
        assert r.value == (var.default if var.bad is None else var.bad) or var.kind == "names", var.name
        assert var.read({}).value == var.default and var.read({}).problem is None


def test_adapter_variable_names_the_adapters_of_the_table() -> None:
    from sentinel_hooks.adapters import TABLE

    assert env.ADAPTERS.choices == tuple(TABLE)


def test_record_payload_names() -> None:
    """Each kind's payload names make a valid record view (no name twice) over the same 64 bytes."""
    base = ringformat.numpy_dtype()
    for kind, code in ringformat.PAYLOAD_NAMES:
        dt = ringformat.numpy_dtype(kind, code)
        assert dt.itemsize == base.itemsize == ringformat.RECORD_SIZE
        assert [dt.fields[n][1] for n in dt.names] == [base.fields[n][1] for n in base.names]


# -- the README's layout section -------------------------------------------------------------------

def _readme_layout() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout")
    end = text.index("\n## ", start + 1)
    return re.findall(r"^\s*- `([\w/]+\.py)`", text[start:end], flags=re.M)


def test_readme_layout_lists_every_module_once() -> None:
    listed = _readme_layout()
    assert len(listed) == len(set(listed)), [m for m in listed if listed.count(m) > 1]
    # hooks/sentinel_hooks/... is listed as sentinel_hooks/...
    on_disk = sorted(str(p.relative_to(ROOT)).removeprefix("hooks/") for p in MODULES.values())
    assert sorted(listed) == on_disk


def test_every_package_is_shipped() -> None:
    """pyproject.toml lists packages by hand (two roots): every folder with an __init__.py is in it,
    or a non-editable install (the container image) would lack it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"} | {"sentinel_hooks._inject"}
    assert listed == packages


def test_nothing_next_to_the_engine_script_shadows_a_framework() -> None:
    """sentinel/demo/vllm_engine.py runs as a file in the vLLM environment, with sentinel/demo/ as
    sys.path[0]: a module there named vllm.py (or cuda.py, torch.py, ...) would be imported instead
    of the real package. It was, once: the demo's engine died at `from vllm import LLM`."""
    demo = ROOT / "sentinel" / "demo"
    assert (demo / "vllm_engine.py").is_file()
    shadowing = {"vllm", "torch", "triton", "cuda", "transformers", "numpy", "sglang", "flashinfer", "huggingface_hub",
                 "tokenizers", "safetensors", "psutil", "json", "os", "sys", "time"}
    assert sorted(p.stem for p in demo.glob("*.py") if p.stem in shadowing) == []


def test_every_module_declares_its_public_names() -> None:
    """``__all__`` on every module (scripts run as files aside), naming only what it defines."""
    scripts = {"sentinel.__main__", "sentinel_hooks._inject.sitecustomize", "sentinel.demo.vllm_engine"}
    missing, wrong = [], {}
    for name, path in MODULES.items():
        if name in scripts:
            continue
        tree = ast.parse(path.read_text())
        decl = [n for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                and any(getattr(t, "id", None) == "__all__" for t in (n.targets if isinstance(n, ast.Assign) else [n.target]))]
        if not decl:
            missing.append(name)
            continue
        names = ast.literal_eval(decl[0].value)
        defined = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        if set(names) - defined and name != "sentinel_hooks":  # that one's names load lazily, from api.py
            wrong[name] = sorted(set(names) - defined)
    assert missing == [] and wrong == {}
    import sentinel_hooks
    from sentinel_hooks import api

    assert sentinel_hooks.__all__ == api.__all__
    assert all(getattr(sentinel_hooks, n) is getattr(api, n) for n in api.__all__)


def test_every_public_function_and_class_has_a_docstring() -> None:
    """The names in each module's __all__ that are functions or classes say what they take and give."""
    missing = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        public = None
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                public = set(ast.literal_eval(node.value))
        for node in tree.body:
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_")
                    and (public is None or node.name in public) and not ast.get_docstring(node)):
                missing.append(f"{name}.{node.name}")
    assert missing == []
