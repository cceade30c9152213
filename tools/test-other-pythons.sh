#!/usr/bin/env bash
# Run the test suite on every other supported Python found on this machine
# (3.12 and 3.13: their sqlite3 transaction control differs from 3.11's).
# A version that is not installed is reported and skipped, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # $1 = 3.12 -> a working interpreter path, or nothing
    local candidate
    for candidate in "$(command -v "python$1" 2>/dev/null || true)" \
                     "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$1".*/bin/"python$1"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import sqlite3' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}

for version in 3.12 3.13; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        echo "skip: no Python $version on this machine"
        continue
    fi
    venv=".venv-$version"
    if [ ! -f "$venv/.installed" ] || [ pyproject.toml -nt "$venv/.installed" ]; then
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e '.[dev]'
        touch "$venv/.installed"
    fi
    echo "== pytest on $("$venv/bin/python" --version)"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${PYTEST_WORKERS:-auto}" --dist worksteal
done
