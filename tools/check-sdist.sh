#!/usr/bin/env bash
# Build the sdist, unpack it in a temporary folder and run its whole test suite there, on the
# package code the sdist carries (PYTHONPATH=src), with this checkout's dev environment.
# Usage: tools/check-sdist.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
work=$(mktemp -d)
chmod 755 "$work"  # a test drops to another user and must reach the unpacked tree
trap 'rm -rf "$work"' EXIT
# Built from a copy, so the checkout itself is not written to.
mkdir "$work/tree" "$work/dist"
tar --exclude='./.git' --exclude='./.venv*' --exclude='*.egg-info' --exclude='__pycache__' \
    --exclude='./build' --exclude='./dist' --exclude='./.*_cache' --exclude='./.hypothesis' \
    -cf - . | tar -xf - -C "$work/tree"
sdist=$(cd "$work/tree" && "$OLDPWD/$python" -c \
    'import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))' \
    "$work/dist" | tail -n 1)
tar -xzf "$work/dist/$sdist" -C "$work"
unpacked="$work/${sdist%.tar.gz}"
echo "== pytest in the unpacked $sdist"
cd "$unpacked"
PYTHONPATH="$unpacked/src" "$OLDPWD/$python" -m pytest -q -p no:cacheprovider
