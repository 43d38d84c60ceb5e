"""Every way sentinel/ and hooks/ start a program, found in the source's AST: never through a shell,
always an argument list, always bounded by a timeout, or else a reason written down here.

Found: subprocess.* (also imported by name or under an alias), os.system, os.popen, os.exec*,
os.spawn*, os.posix_spawn*, pty.spawn, asyncio.create_subprocess_*. The shell forms (os.system,
os.popen, subprocess.getoutput / getstatusoutput, asyncio.create_subprocess_shell) are refused
outright, and so is an argument list that starts a shell with -c.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = (REPO / "sentinel", REPO / "hooks" / "sentinel_hooks")

SHELL_FORMS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell")}
WITH_TIMEOUT = {("subprocess", n) for n in ("run", "call", "check_call", "check_output")}
SPAWNERS = {("subprocess", "Popen"), ("pty", "spawn"), ("asyncio", "create_subprocess_exec")} | {
    ("os", n) for n in ("execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv",
                        "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn",
                        "posix_spawnp")}
SHELLS = {"sh", "bash", "dash", "zsh", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "cmd", "cmd.exe"}

# Calls with no timeout of their own, and why that is fine. Keyed by (file, function).
DOCUMENTED = {
    ("hooks/sentinel_hooks/logtap.py", "run"):
        "the log tap is the parent of the user's command (a server) and waits for it as long as it runs: a "
        "timeout would kill it",
    ("sentinel/cli/run.py", "run"):
        "os.execve replaces `sentinel run` with the user's command (a server): a timeout would kill it",
    ("sentinel/demo/run.py", "_hang_phase"):
        "the demo's gloo ranks run for the demo's duration; its loop has a deadline and kills them in finally",
    ("sentinel/demo/run.py", "_crash_phase"):
        "the crashing demo rank is waited for with wait(timeout=60)",
    ("sentinel/demo/run.py", "_gpu_phase"):
        "the CUDA demo rank is waited for with wait(timeout=120), then killed",
    ("sentinel/demo/run.py", "run_demo"):
        "the demo's workload ranks run for the demo's duration; its loop has a deadline and kills them in finally",
    ("sentinel/demo/vllm_demo.py", "run_vllm_demo"):
        "the interactive vLLM demo's engine: wait(timeout=30), then killpg of its session",
}
REAPERS = {"kill", "killpg", "terminate", "wait"}  # what a function that starts a long-lived child must call


@dataclass
class Site:
    file: str
    function: str
    line: int
    call: tuple[str, str]
    node: ast.Call
    scope: ast.AST


def _aliases(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """local name -> (module, attribute or None for the module itself)."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = (a.name, None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = (node.module, a.name)
    return out


def _target(call: ast.Call, aliases: dict[str, tuple[str, str | None]]) -> tuple[str, str] | None:
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in aliases:
        module, attr = aliases[f.value.id]
        if attr is None:
            return (module, f.attr)
    if isinstance(f, ast.Name) and f.id in aliases:
        module, attr = aliases[f.id]
        if attr is not None:
            return (module, attr)
    return None


def find_sites() -> list[Site]:
    sites = []
    watched = SHELL_FORMS | WITH_TIMEOUT | SPAWNERS
    for root in ROOTS:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            aliases = _aliases(tree)
            scopes: list[ast.AST] = [tree]

            def visit(node: ast.AST, scope: ast.AST, name: str, rel: str = str(path.relative_to(REPO)),
                      aliases: dict = aliases) -> None:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                        visit(child, child, child.name)
                        continue
                    if isinstance(child, ast.Call):
                        target = _target(child, aliases)
                        if target in watched or (target and target[0] == "subprocess"):
                            sites.append(Site(rel, name, child.lineno, target, child, scope))
                    visit(child, scope, name)

            visit(tree, scopes[0], "<module>")
    return sites


def _is_list_expr(expr: ast.AST, scope: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``expr`` is statically an argument list (never a command string)."""
    if isinstance(expr, ast.List | ast.Tuple | ast.ListComp):
        return True
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _is_list_expr(expr.left, scope, seen) and _is_list_expr(expr.right, scope, seen)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("list", "tuple"):
        return True
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Slice):
        return _is_list_expr(expr.value, scope, seen)
    if isinstance(expr, ast.Name):
        if expr.id in seen:
            return True  # `cmd = cmd[1:]`: as list as what it was
        values = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == expr.id for t in node.targets):
                values.append(node.value)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id == expr.id and node.value is not None:
                values.append(node.value)
        return bool(values) and all(_is_list_expr(v, scope, seen | {expr.id}) for v in values)
    return False


def _argv(site: Site) -> ast.AST | None:
    call, (module, name) = site.node, site.call
    kw = {k.arg: k.value for k in call.keywords}
    if module == "subprocess":
        return kw.get("args", call.args[0] if call.args else None)
    if name.startswith(("execv", "spawnv", "posix_spawn")) or name == "spawn":
        index = 0 if name == "spawn" else 1 + name.startswith("spawnv")
        return call.args[index] if len(call.args) > index else None
    if name == "create_subprocess_exec":
        return ast.List(elts=list(call.args))
    return None  # execl* / spawnl*: separate arguments, a list by construction


def _starts_a_shell(argv: ast.AST | None) -> bool:
    if not isinstance(argv, ast.List | ast.Tuple) or len(argv.elts) < 2:
        return False
    first, second = argv.elts[0], argv.elts[1]
    return (isinstance(first, ast.Constant) and first.value in SHELLS and isinstance(second, ast.Constant)
            and isinstance(second.value, str) and second.value.startswith("-") and "c" in second.value)


def _reaps(scope: ast.AST) -> bool:
    for node in ast.walk(scope):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in REAPERS:
            return True
    return False


def problems(sites: list[Site]) -> list[str]:
    out = []
    for s in sites:
        where = f"{s.file}:{s.line} {'.'.join(s.call)} in {s.function}()"
        kw = {k.arg: k.value for k in s.node.keywords}
        if s.call in SHELL_FORMS:
            out.append(f"{where}: runs a shell")
            continue
        shell = kw.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            out.append(f"{where}: shell= is not False")
        argv = _argv(s)
        if argv is not None and not _is_list_expr(argv, s.scope):
            out.append(f"{where}: the command is not an argument list")
        if _starts_a_shell(argv):
            out.append(f"{where}: the argument list starts a shell with -c")
        if s.call in WITH_TIMEOUT:
            timeout = kw.get("timeout")
            if timeout is None or (isinstance(timeout, ast.Constant) and timeout.value is None):
                out.append(f"{where}: no timeout")
        elif s.call in SPAWNERS:
            if (s.file, s.function) not in DOCUMENTED:
                out.append(f"{where}: no timeout of its own, and no reason in DOCUMENTED")
            elif s.call == ("subprocess", "Popen") and not _reaps(s.scope):
                out.append(f"{where}: starts a child it never waits for or kills")
        elif s.call[0] == "subprocess" and s.call[1] not in ("PIPE", "DEVNULL", "STDOUT"):
            out.append(f"{where}: a subprocess function this test does not know")
    return out


def test_every_program_start_has_no_shell_a_list_and_a_timeout() -> None:
    sites = find_sites()
    # The debugger and the stack dumper, at least, are found (the scan itself works).
    found = {(s.file, s.function, s.call) for s in sites}
    assert ("sentinel/triage/readers/cudagdb.py", "run", ("subprocess", "run")) in found
    assert ("sentinel/daemon/stacks.py", "dump", ("subprocess", "run")) in found
    assert problems(sites) == []
    # Every documented reason still names a place that starts a program.
    assert set(DOCUMENTED) <= {(s.file, s.function) for s in sites}


def test_the_checker_catches_what_it_must(tmp_path: Path) -> None:
    """The rules themselves, on a module written to break each."""
    bad = '''
import os, subprocess as sp
from subprocess import check_output
def f(cmd, user_text):
    sp.run("ls -l " + user_text, timeout=5)
    sp.run(["ls"], shell=True, timeout=5)
    check_output(["ls"])
    sp.run(["sh", "-c", user_text], timeout=5)
    os.system(user_text)
    sp.Popen(["sleep", "1"])
    argv = ["ls"]
    argv += [user_text]
    sp.run(argv, timeout=1)
'''
    path = tmp_path / "bad.py"
    path.write_text(bad)
    tree = ast.parse(bad)
    aliases = _aliases(tree)
    func = tree.body[2]
    sites = [Site("bad.py", "f", n.lineno, _target(n, aliases), n, func)
             for n in ast.walk(func) if isinstance(n, ast.Call) and _target(n, aliases)]
    found = problems(sites)
    assert [p.split(": ", 1)[1] for p in found] == [
        "the command is not an argument list",
        "shell= is not False",
        "no timeout",
        "the argument list starts a shell with -c",
        "runs a shell",
        "no timeout of its own, and no reason in DOCUMENTED",
    ], found
