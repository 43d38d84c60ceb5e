"""Putting the hooks into a command's Python processes with no change to its code.

``sentinel run`` copies the ``sentinel_hooks`` package into a versioned folder under
SENTINEL_DIR (the same layout an init container copies into a pod's shared volume), puts it and
its ``sitecustomize`` on PYTHONPATH, and execs the command. Only that folder goes on the path,
never this environment's site-packages, so the command's own packages are untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import sentinel_hooks
from sentinel_hooks import env as sentinel_env
from sentinel_hooks import layout

__all__ = [
    "HOOKS_PACKAGE", "hooks_digest", "install_hooks", "prepare", "injected_env", "compile_tree", "code_umask",
]

HOOKS_PACKAGE = os.path.dirname(os.path.abspath(sentinel_hooks.__file__))


def _package_files() -> list[str]:
    out = []
    for root, dirs, files in os.walk(HOOKS_PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))
    return out


def hooks_digest() -> str:
    """12 hex digits naming this hooks version's copy: the head of a SHA-256 over the package's .py
    files (relative path and bytes, in a fixed order) and its dist-info text. Raises OSError if a
    file cannot be read."""
    h = hashlib.sha256()
    for path in _package_files():
        h.update(os.path.relpath(path, HOOKS_PACKAGE).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    for name, text in sorted(_dist_info_files().items()):
        h.update(name.encode())
        h.update(text.encode())
    return h.hexdigest()[:12]


def _dist_info_name() -> str:
    return f"sentinel_hooks-{sentinel_hooks.__version__}.dist-info"


def _dist_info_files() -> dict[str, str]:
    """A minimal dist-info for the copied hooks: importlib.metadata finds it on PYTHONPATH, so the
    frameworks' plugin entry points (vllm.general_plugins, sglang.srt.plugins) load the adapters
    with nothing installed in the serving environment."""
    from sentinel_hooks.adapters import ENTRY_POINTS

    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in sorted(eps.items())) + "\n"
        for group, eps in sorted(ENTRY_POINTS.items())
    )
    metadata = (f"Metadata-Version: 2.1\nName: sentinel-hooks\nVersion: {sentinel_hooks.__version__}\n"
                "Summary: Sentinel's in-process hooks, copied by `sentinel run` / `sentinel install-hooks`.\n")
    return {"METADATA": metadata, "entry_points.txt": entry_points, "top_level.txt": "sentinel_hooks\n"}


def _publish_dir(final: str, fill: Callable[[str], None]) -> None:
    """Build a folder in a temp dir beside ``final``, then rename it into place: readers never see
    a half-written one. A concurrent run may win the race; its folder is identical."""
    if os.path.isdir(final):
        return
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(final))
    try:
        os.chmod(tmp, 0o755)  # readable by a serving container running as another user
        fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_dist_info(tmp: str) -> None:
    for name, text in _dist_info_files().items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(tmp, name), 0o644)


def _copy_package(tmp: str) -> None:
    for path in _package_files():
        rel = os.path.relpath(path, HOOKS_PACKAGE)
        os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(path, os.path.join(tmp, rel))


def install_hooks(dest_root: str) -> str:
    """Copy the hooks package to ``dest_root/sentinel_hooks`` atomically, with its dist-info (the
    plugin entry points) next to it; returns ``dest_root``."""
    os.makedirs(dest_root, mode=0o755, exist_ok=True)
    _publish_dir(os.path.join(dest_root, _dist_info_name()), _write_dist_info)
    _publish_dir(os.path.join(dest_root, "sentinel_hooks"), _copy_package)
    return dest_root


def prepare(base_dir: str) -> str:
    """The folder to put on PYTHONPATH for ``base_dir`` (created on first use)."""
    root = os.path.join(layout.hooks_dir(base_dir), f"{sentinel_hooks.__version__}-{hooks_digest()}")
    return install_hooks(root)


def injected_env(base_dir: str, env: dict[str, str] | None = None, eager: bool = False) -> dict[str, str]:
    """A copy of ``env`` (default: os.environ) that hooks a command: the hooks copy (``prepare``) and
    its ``_inject`` folder first on PYTHONPATH, SENTINEL_DIR = ``base_dir`` made absolute,
    SENTINEL_EAGER=1 with ``eager``, and defaults (the caller's own values win) for CUDA's coredump
    variables (unless SENTINEL_COREDUMP is off) and TORCH_FR_DUMP_TEMP_FILE. Creates ``base_dir``
    (0700) and those folders; raises OSError when it cannot."""
    env = dict(os.environ if env is None else env)
    base_dir = os.path.abspath(base_dir)
    os.makedirs(base_dir, mode=0o700, exist_ok=True)
    root = prepare(base_dir)
    inject = os.path.join(root, "sentinel_hooks", "_inject")
    parts = [inject, root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env[sentinel_env.DIR.name] = base_dir
    if sentinel_env.read(sentinel_env.COREDUMP, env):
        # Also for non-Python processes of the command. The user's own settings win.
        from sentinel_hooks.crash import coredump_env

        for key, value in coredump_env(base_dir).items():
            env.setdefault(key, value)
        os.makedirs(layout.cores_dir(base_dir), mode=0o700, exist_ok=True)
    # Where PyTorch's Flight Recorder writes its dumps, when the user enables it
    # (TORCH_FR_BUFFER_SIZE): the daemon attaches them to the hang they belong to.
    prefix = layout.fr_dump_prefix(base_dir)
    os.makedirs(os.path.dirname(prefix), mode=0o700, exist_ok=True)
    env.setdefault("TORCH_FR_DUMP_TEMP_FILE", prefix)
    if eager:
        env[sentinel_env.EAGER.name] = "1"
    return env


def compile_tree(root: str) -> None:
    """Byte-compile a hooks copy now, under ``code_umask``: otherwise the command's first Python
    process makes its __pycache__ folders, with whatever umask the command runs under."""
    import compileall

    compileall.compile_dir(root, quiet=2)


@contextlib.contextmanager
def code_umask() -> Iterator[None]:
    """The hooks copy is code on the command's PYTHONPATH: never writable by the group or others,
    whatever the caller's umask (restored before the command runs)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
