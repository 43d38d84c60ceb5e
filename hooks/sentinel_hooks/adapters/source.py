"""Answer "does this name exist in the framework's real source?" with `ast`, without importing it.

Each adapter declares ``CHECKS``: for each of its checks, the (module, "Name" | "Class.attr")
pairs it uses, as alternatives of which one must resolve in full (``checks_in``). The adapter
source tests (tests/test_vllm_adapter.py, tests/test_sglang_source.py) require every check in every
declared release's source (installed, or a downloaded wheel), which catches a framework release
that renames a hook point before a user's serving process does; `sentinel doctor` says which checks
the release installed where it runs would have on. Stdlib only: no framework is imported.

Resolution rules (static, deliberately simple):
- a module-level name: a def, a class, an assignment (plain or annotated), or an ``import``
  binding (followed to its module when that module is part of the package);
- ``Class.attr``: a method, a class-level assignment or annotation (dataclass fields), or an
  instance attribute assigned as ``self.attr`` in any method; searched through the base classes
  the same way (across modules of the package, by import).
"""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

__all__ = ["SourceIndex", "checks_in", "installed"]


class SourceIndex:
    """A framework package's source, module name -> text, parsed on demand: ``has(module,
    dotted)`` says whether a name resolves (rules in the module docstring), ``lookup`` returns its
    ``ast`` node, ``literal`` a module-level constant. Built from an installed package
    (``from_dir``) or a wheel, read as a zip and never installed (``from_wheel``). Its lookups raise
    LookupError for a module the package does not have."""

    def __init__(self, files: dict[str, str], package: str) -> None:
        """``files``: module name -> source text."""
        self.files = files
        self.package = package
        self._trees: dict[str, ast.Module] = {}

    @classmethod
    def from_dir(cls, root: Path, package: str) -> SourceIndex:
        files = {}
        for path in (root / package).rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path.read_text(encoding="utf-8", errors="replace")
        return cls(files, package)

    @classmethod
    def from_wheel(cls, wheel: Path, package: str) -> SourceIndex:
        files = {}
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(package + "/") and name.endswith(".py"):
                    parts = name[:-3].split("/")
                    if parts[-1] == "__init__":
                        parts.pop()
                    files[".".join(parts)] = zf.read(name).decode("utf-8", errors="replace")
        return cls(files, package)

    # -- lookups ------------------------------------------------------------------------------------

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            if module not in self.files:
                raise LookupError(f"module {module} is not in the {self.package} source")
            self._trees[module] = ast.parse(self.files[module], filename=module)
        return self._trees[module]

    def _import_target(self, module: str, node: ast.ImportFrom, alias: ast.alias) -> tuple[str, str] | None:
        if node.level:
            base = module.split(".")
            is_pkg = self._is_package(module)
            base = base[: len(base) - node.level + (1 if is_pkg else 0)]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        if src in self.files and (src + "." + alias.name) not in self.files:
            return src, alias.name
        if (src + "." + alias.name) in self.files:
            return src + "." + alias.name, ""  # a submodule
        return None

    def _is_package(self, module: str) -> bool:
        return any(m.startswith(module + ".") for m in self.files)

    def resolve(self, module: str, name: str, _depth: int = 0) -> tuple[str, ast.AST | None]:
        """(module, node) where ``name`` is defined; node is None for an import of something
        outside the package (which counts as existing). Raises LookupError when absent."""
        if _depth > 10:
            raise LookupError(f"import cycle resolving {module}.{name}")
        found: ast.AST | None = None
        for node in self.tree(module).body:
            for target, defined in _top_level_bindings(node):
                if target != name:
                    continue
                if isinstance(defined, ast.alias) and isinstance(node, ast.ImportFrom):
                    where = self._import_target(module, node, defined)
                    if where is None:
                        return module, None  # bound by an import from outside the package
                    src, real = where
                    if not real:
                        return src, None
                    return self.resolve(src, real, _depth + 1)
                if isinstance(defined, ast.alias):
                    return module, None
                found = defined  # the last binding wins, as at run time
        if found is None:
            raise LookupError(f"{module} defines no {name}")
        return module, found

    def has(self, module: str, dotted: str) -> bool:
        try:
            self.lookup(module, dotted)
            return True
        except LookupError:
            return False

    def lookup(self, module: str, dotted: str) -> ast.AST | None:
        head, _, attr = dotted.partition(".")
        where, node = self.resolve(module, head)
        if not attr:
            return node
        if not isinstance(node, ast.ClassDef):
            raise LookupError(f"{module}.{head} is not a class in the source (resolved in {where})")
        return self._class_attr(where, node, attr, set())

    def literal(self, module: str, name: str):
        """The value of a module-level constant assignment."""
        _, node = self.resolve(module, name)
        value = getattr(node, "value", None)
        return ast.literal_eval(value)

    def _class_attr(self, module: str, cls: ast.ClassDef, attr: str, seen: set) -> ast.AST:
        key = (module, cls.name)
        if key in seen:
            raise LookupError(f"cycle in the bases of {cls.name}")
        seen.add(key)
        for node in cls.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == attr:
                return node
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == attr:
                return node
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in node.targets):
                return node
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    targets = sub.targets if isinstance(sub, ast.Assign) else (
                        [sub.target] if isinstance(sub, ast.AnnAssign | ast.AugAssign) else [])
                    for t in targets:
                        if (isinstance(t, ast.Attribute) and t.attr == attr and isinstance(t.value, ast.Name)
                                and t.value.id == "self"):
                            return sub
        for base in cls.bases:
            base_name = _dotted(base.value if isinstance(base, ast.Subscript) else base)
            if base_name is None:
                continue
            try:
                if "." in base_name:  # module.Class
                    mod_alias, _, cname = base_name.rpartition(".")
                    where, bnode = self.resolve(module, mod_alias)
                    where, bnode = self.resolve(where, cname)
                else:
                    where, bnode = self.resolve(module, base_name)
            except LookupError:
                continue
            if isinstance(bnode, ast.ClassDef):
                try:
                    return self._class_attr(where, bnode, attr, seen)
                except LookupError:
                    continue
        raise LookupError(f"{module}.{cls.name} has no {attr}")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _top_level_bindings(node: ast.AST):
    """(name, defining node) pairs a top-level statement binds (descending into if/try blocks)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name, node
    elif isinstance(node, ast.Assign):
        for t in node.targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    yield n.id, node
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        yield node.target.id, node
    elif isinstance(node, ast.ImportFrom):
        for alias in node.names:
            yield alias.asname or alias.name, alias
    elif isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.asname or alias.name.split(".")[0], alias
    elif isinstance(node, ast.If | ast.Try):
        for block in [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])] + [
                h.body for h in getattr(node, "handlers", [])]:
            for sub in block:
                yield from _top_level_bindings(sub)


def checks_in(source: SourceIndex, checks: dict[str, tuple[tuple[tuple[str, str], ...], ...]]) -> dict[str, list[str]]:
    """For each check of an adapter's ``CHECKS``: [] when one of its alternatives resolves in full
    in ``source``, else the names missing from the alternative that came closest ("module: Name")."""
    out = {}
    for check, alternatives in checks.items():
        best: list[str] | None = None
        for names in alternatives:
            missing = [f"{module}: {dotted}" for module, dotted in names if not source.has(module, dotted)]
            if best is None or len(missing) < len(best):
                best = missing
            if not missing:
                break
        out[check] = best or []
    return out


def installed(name: str, paths: list[str] | None = None) -> dict | None:
    """Adapter ``name``'s framework as installed under ``paths`` (site-packages folders; default
    this Python's ``sys.path``), read without importing it: ``{"distribution", "version",
    "also_installed", "verdict", "checks"}`` (the version from the package's generated
    ``_version`` module where it has one, as at run time; ``also_installed``: other distributions of
    it found there, a sign of a stale install), the verdict as ``versions.check_version`` gives it against the adapter's
    declared range, and ``checks`` as ``checks_in`` gives them for the installed source. None when
    none of the adapter's distributions is installed there."""
    import importlib.metadata as md

    from . import get
    from .versions import check_version

    adapter = get(name)
    found = [(d, n) for n in adapter.distributions
             for d in (md.distributions(name=n, path=paths) if paths else md.distributions(name=n))]
    if not found:
        return None
    dist, dist_name = found[0]
    root = Path(str(dist.locate_file("")))
    source = SourceIndex.from_dir(root, adapter.module)
    checks = module_checks(name)
    # The version the running framework reports is its module's (as the adapter reads it at run time);
    # a stale dist-info of another distribution beside it does not change that.
    version = dist.version
    try:
        version = str(source.literal(f"{adapter.module}._version", "__version__"))
    except Exception:  # no generated _version module: the distribution's metadata it is
        pass
    others = sorted({f"{n} {d.version}" for d, n in found[1:]})
    return {"distribution": dist_name, "version": version, "also_installed": others,
            "verdict": check_version(version, adapter.instrumentation_dependencies(), dist_name),
            "checks": checks_in(source, checks) if source.files else {c: ["package source not found"]
                                                                       for c in checks}}


def module_checks(name: str) -> dict:
    """Adapter ``name``'s ``CHECKS`` (its module's)."""
    import importlib

    from . import ADAPTERS

    return importlib.import_module(ADAPTERS[name]).CHECKS
