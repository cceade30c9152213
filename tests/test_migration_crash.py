"""A process killed with SIGKILL in the middle of a migration leaves a sound, unmigrated file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

MIGRATOR_SCRIPT = """
import sys
from pathlib import Path
from circuitforge_core.db import get_db, run_migrations

db_path, folder, marker, target = sys.argv[1:5]

def on_start(name):
    if name == target:
        Path(marker).write_text(name)

db = get_db(db_path)
run_migrations(db, folder, on_start=on_start)
db.close()
"""


def _rows(count: int, label: str) -> str:
    return (
        f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {count})\n"
        f"INSERT INTO big (v) SELECT printf('{label}-%08d-%s', i, hex(randomblob(6))) FROM c;\n"
    )


def _spin(count: int) -> str:
    """CPU work that writes one row: time passes inside the transaction without disk growth."""
    return (
        f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {count})\n"
        f"INSERT INTO spins SELECT count(*) FROM c;\n"
    )


# About 3-4 s on a busy 2-core machine: writes that outgrow the page cache (so
# uncommitted pages reach the WAL file), a long CPU stretch, more writes, and a
# last CPU stretch that keeps the commit well after the latest kill.
LONG_MIGRATION = (
    "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT NOT NULL);\n"
    "CREATE TABLE spins (n INTEGER);\n"
    + _rows(300_000, "a")
    + "CREATE INDEX big_v ON big (v);\n"
    + _spin(6_000_000)
    + _rows(300_000, "b")
    + _spin(4_000_000)
)
# When to kill, judged from outside so that machine speed does not matter:
# right after the migration starts, then once its uncommitted pages have grown
# the WAL file past 6 MiB (first writes), then past 20 MiB (second writes).
KILL_WHEN = [("soon after the start", 0), ("after the first writes", 6), ("late", 20)]
MIB = 1024 * 1024

EARLIER = {
    "001_keep.sql": "CREATE TABLE keep (x INTEGER); INSERT INTO keep VALUES (1);",
    "002_more.sql": "INSERT INTO keep VALUES (2);",
}


def _start_migrator(db_path: Path, folder: Path, target: str, log: Path) -> subprocess.Popen[bytes]:
    marker = db_path.parent / "started"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", MIGRATOR_SCRIPT, str(db_path), str(folder), str(marker), target],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 60
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            child.wait()
            raise AssertionError(f"the migrator never started {target}: {log.read_text()}")
        time.sleep(0.01)
    return child


def _wait_for_wal(db_path: Path, size: int, child: subprocess.Popen[bytes]) -> None:
    """Return once the database's WAL file holds at least ``size`` bytes."""
    deadline = time.monotonic() + 60
    while os.path.getsize(f"{db_path}-wal") < size:
        assert child.poll() is None, "the migration ended before its WAL grew"
        assert time.monotonic() < deadline, "the WAL never grew"
        time.sleep(0.002)


def _kill(child: subprocess.Popen[bytes], after: float, log: Path) -> None:
    time.sleep(after)
    assert child.poll() is None, f"the migration ended before the kill: {log.read_text()}"
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL


def _recorded(db_path: Path) -> list[str]:
    db = get_db(db_path)
    try:
        return [name for (name,) in db.execute("SELECT name FROM _migrations ORDER BY name")]
    finally:
        db.close()


@pytest.mark.slow
def test_killed_migration_leaves_no_trace_and_reruns(tmp_path: Path) -> None:
    """SIGKILL mid-migration: integrity ok, nothing of the file or its row; a rerun applies it."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, text in EARLIER.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "003_long.sql").write_text(LONG_MIGRATION, encoding="utf-8")
    for attempt, (when, wal_mib) in enumerate(KILL_WHEN):
        db_path = tmp_path / f"attempt{attempt}" / "app.db"
        log = tmp_path / f"attempt{attempt}.log"
        db_path.parent.mkdir()
        child = _start_migrator(db_path, folder, "003_long.sql", log)
        if wal_mib:
            _wait_for_wal(db_path, wal_mib * MIB, child)
            _kill(child, 0, log)
        else:
            _kill(child, 0.1, log)
        # Uncommitted frames stay in the WAL: recovery must tell them from committed ones.
        assert os.path.getsize(f"{db_path}-wal") >= wal_mib * MIB

        db = get_db(db_path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            assert not tables & {"big", "spins", "big_v"}, f"killed {when}"
            assert [n for (n,) in db.execute("SELECT name FROM _migrations ORDER BY name")] == [
                "001_keep.sql",
                "002_more.sql",
            ]
            assert db.execute("SELECT x FROM keep ORDER BY x").fetchall() == [(1,), (2,)]

            assert run_migrations(db, folder) == ["003_long.sql"]
            assert db.execute("SELECT count(*) FROM big").fetchone() == (600_000,)
            assert db.execute("SELECT n FROM spins ORDER BY n").fetchall() == [
                (4_000_000,),
                (6_000_000,),
            ]
            assert run_migrations(db, folder) == []
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            db.close()
        assert _recorded(db_path) == ["001_keep.sql", "002_more.sql", "003_long.sql"]


# Six autocommitted chunks, each a statement of its own; safe to run again.
OUTSIDE_MIGRATION = "-- cf-db: no-transaction\n" + "".join(
    f"INSERT OR IGNORE INTO chunks (id, v)\n"
    f"  WITH RECURSIVE c(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM c "
    f"WHERE i < {start + 299_999})\n"
    f"  SELECT i, printf('chunk-%08d', i) FROM c;\n"
    for start in range(1, 1_800_000, 300_000)
)


def _wait_for_rows(db_path: Path, count: int) -> None:
    reader = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        deadline = time.monotonic() + 60
        while reader.execute("SELECT count(*) FROM chunks").fetchone()[0] < count:
            assert time.monotonic() < deadline, "the no-transaction migration never progressed"
            time.sleep(0.01)
    finally:
        reader.close()


@pytest.mark.slow
def test_killed_no_transaction_migration_is_not_recorded(tmp_path: Path) -> None:
    """SIGKILL mid-way through a no-transaction file: not recorded, and a rerun completes it."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_chunks.sql").write_text(
        "CREATE TABLE chunks (id INTEGER PRIMARY KEY, v TEXT NOT NULL);", encoding="utf-8"
    )
    (folder / "002_fill.sql").write_text(OUTSIDE_MIGRATION, encoding="utf-8")
    db_path = tmp_path / "app.db"
    log = tmp_path / "migrator.log"
    child = _start_migrator(db_path, folder, "002_fill.sql", log)
    _wait_for_rows(db_path, 300_000)  # the first chunk is committed
    _kill(child, 0, log)

    db = get_db(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert [n for (n,) in db.execute("SELECT name FROM _migrations")] == ["001_chunks.sql"]
        (done,) = db.execute("SELECT count(*) FROM chunks").fetchone()
        assert done % 300_000 == 0, "each chunk is one statement: all of it or none"
        assert 300_000 <= done < 1_800_000
        # The lock file the killed process held does not block the rerun.
        assert run_migrations(db, folder, lock_timeout=30) == ["002_fill.sql"]
        assert db.execute("SELECT count(*), min(id), max(id) FROM chunks").fetchone() == (
            1_800_000,
            1,
            1_800_000,
        )
        assert run_migrations(db, folder) == []
    finally:
        db.close()
    assert _recorded(db_path) == ["001_chunks.sql", "002_fill.sql"]
