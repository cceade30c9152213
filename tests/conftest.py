"""Shared fixtures: real SQLite files in temporary folders, a clean environment.

Also the Hypothesis profiles. ``ci`` is the default for every run (``make test``,
CI, a bare ``pytest``): derandomised, so each run tries the same examples and a
red run is never luck; no example database, so a local ``.hypothesis`` folder
cannot make one machine's run differ from another's; no deadline and no
too-slow health check, so a loaded machine cannot fail a test that is merely
slow. Failures found once stay as explicit ``@example``s. ``deep``
(``make test-deep``, ``pytest --hypothesis-profile=deep``) draws fresh examples,
25 times as many, and keeps what fails in ``.hypothesis`` to replay it first.
Tests leave ``max_examples`` and ``deadline`` to the profile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import circuitforge_core.db

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    derandomize=False,
    max_examples=5_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# The default; `--hypothesis-profile=NAME` is applied after this file and wins.
settings.load_profile("ci")

pytest_plugins = ["pytester"]  # the cf_db plugin's own tests run inner pytest sessions

#: The folder to put on PYTHONPATH so a child interpreter imports this package.
SOURCE_ROOT = Path(circuitforge_core.db.__file__).parents[2]

# Environment variables the library (or its later parts) may read; tests never
# inherit them from the machine they run on.
# CF_DB_SQLITE stays: it is acted on at import, and `make test-bundled-sqlite` sets it so that
# the processes tests start run on the bundled SQLite too.
LIBRARY_ENV_VARS = (
    "CLOUD_DATA_ROOT",
    "CLOUD_MODE",
    "CF_SERVER_SECRET",
    "CF_DB_PATH",
    "CF_DB_ACCEPT_WAL_RESET_BUG",
    "CF_DB_MIGRATIONS",
    "CF_DB_PRODUCT_PATH",
    "CF_REPLICA_URL",
    "CF_LITESTREAM_SOCKET",
    "CF_LITESTREAM",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LIBRARY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a fresh database file may be created."""
    return tmp_path / "data" / "app.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[circuitforge_core.db.Connection]:
    """A ``get_db`` connection to ``db_path``, closed after the test (test modules may override)."""
    connection = circuitforge_core.db.get_db(db_path)
    yield connection
    connection.close()


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """An empty migrations folder."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    return folder


@pytest.fixture
def write_migration(migrations_dir: Path):  # type: ignore[no-untyped-def]
    """Write ``name`` with ``text`` (str, or bytes written as they are) into the folder."""

    def write(name: str, text: str | bytes) -> Path:
        path = migrations_dir / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def chdir_tmp(tmp_path: Path) -> Iterator[Path]:
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@pytest.fixture
def run_as_nobody() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_as_nobody(script, *args)``: ``python -c script args`` as an unprivileged user."""
    return _run_python_as_nobody


def _run_python_as_nobody(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script args`` as a user without privileges, with this package importable.

    As root the child drops to ``nobody`` (root reads and writes everything, so
    permission checks would be meaningless), which needs an interpreter and a
    source tree that ``nobody`` can reach; otherwise the test is skipped. As
    any other user the child runs as that user.
    """
    preexec = None
    python = sys.executable
    if os.geteuid() == 0:

        def preexec() -> None:
            os.setgid(65534)
            os.setuid(65534)

        python = next(
            (p for p in (sys.executable, "/usr/bin/python3") if _reachable_by_others(Path(p))),
            "",
        )
        if not python or not _reachable_by_others(SOURCE_ROOT):
            pytest.skip("no interpreter and source tree that another user can reach")
    return subprocess.run(
        [python, "-c", script, *args],
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        # Another user's interpreter has no pysqlite3: the standard library's SQLite.
        env={k: v for k, v in os.environ.items() if k != "CF_DB_SQLITE"}
        | {"PYTHONPATH": str(SOURCE_ROOT)},
        timeout=60,
        check=False,
    )


def _reachable_by_others(path: Path) -> bool:
    """True if every folder above ``path`` lets other users through (and the file exists)."""
    resolved = path.resolve()
    if not resolved.exists():
        return False
    return all(parent.stat().st_mode & 0o001 for parent in resolved.parents)


def pytest_report_header() -> str:
    """Which SQLite this run is on (`make test-bundled-sqlite`: pysqlite3's)."""
    import circuitforge_core.db  # noqa: F401, I001 - first: it decides what sqlite3 is
    import sqlite3

    return f"sqlite3: {sqlite3.__name__}, SQLite {sqlite3.sqlite_version}"


# The replication tests' real parts (a moto S3 server shared by the session, Litestream
# sidecars); imported here so that every test module shares one server.
from replication_support import (  # noqa: E402
    moto_server,
    s3_base,
    s3_env,
    short_dir,
    start_sidecar,
)

__all__ = ["moto_server", "s3_base", "s3_env", "short_dir", "start_sidecar"]
