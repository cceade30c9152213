"""A process killed with SIGKILL in the middle of a migration leaves a sound, unmigrated file."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

# The migrator stops at one named kill point of the file and says so; the test
# then kills it there. A kill point is an SQL function call, so it can sit between
# statements or inside one (in a WHERE clause, at one row of a long INSERT); the
# moment of the kill depends on nothing but the file, never on machine speed.
MIGRATOR_SCRIPT = """
import sys, threading
from circuitforge_core.db import get_db, run_migrations

db_path, folder, stop_at = sys.argv[1:4]

def kill_point(name, now):
    if name == stop_at and now:
        print(name, flush=True)
        threading.Event().wait()  # until SIGKILL
    return 1

db = get_db(db_path)
db.create_function("kill_point", 2, kill_point)
run_migrations(db, folder)
db.close()
"""


def no_kill_points(db: sqlite3.Connection) -> None:
    """Let the test's own connection run files that hold kill points."""
    db.create_function("kill_point", 2, lambda name, now: 1)


def _rows(count: int, label: str, kill_at_row: int = 0) -> str:
    where = f" WHERE kill_point('{label}', i = {kill_at_row})" if kill_at_row else ""
    return (
        f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {count})\n"
        f"INSERT INTO big (v) SELECT printf('{label}-%08d-%s', i, hex(randomblob(6))) FROM c"
        f"{where};\n"
    )


# Writes that outgrow the page cache, so that uncommitted pages reach the WAL file
# long before the commit; kill points before the first write, inside the second
# INSERT (its first 200,000 rows written), and after the last statement (the commit
# and its _migrations row are next).
LONG_MIGRATION = (
    "CREATE TABLE big (id INTEGER PRIMARY KEY, v TEXT NOT NULL);\n"
    "SELECT kill_point('start', 1);\n"
    + _rows(300_000, "a")
    + "CREATE INDEX big_v ON big (v);\n"
    + _rows(300_000, "b", kill_at_row=200_000)
    + "SELECT kill_point('end', 1);\n"
)
# (kill point, the least the WAL holds by then, in MiB)
KILL_POINTS = [("start", 0), ("b", 20), ("end", 28)]
MIB = 1024 * 1024

EARLIER = {
    "001_keep.sql": "CREATE TABLE keep (x INTEGER); INSERT INTO keep VALUES (1);",
    "002_more.sql": "INSERT INTO keep VALUES (2);",
}


def _start_migrator(
    db_path: Path, folder: Path, kill_point: str, log: Path
) -> subprocess.Popen[bytes]:
    """Start the migrator and return once it waits at ``kill_point``."""
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", MIGRATOR_SCRIPT, str(db_path), str(folder), kill_point],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 120)
    line = child.stdout.readline() if ready else b""
    if line.strip() != kill_point.encode():
        child.kill()
        child.wait()
        raise AssertionError(f"the migrator never reached {kill_point}: {log.read_text()}")
    return child


def _kill(child: subprocess.Popen[bytes]) -> None:
    assert child.poll() is None
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    assert child.stdout is not None
    child.stdout.close()


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
    for attempt, (kill_point, wal_mib) in enumerate(KILL_POINTS):
        db_path = tmp_path / f"attempt{attempt}" / "app.db"
        log = tmp_path / f"attempt{attempt}.log"
        db_path.parent.mkdir()
        _kill(_start_migrator(db_path, folder, kill_point, log))
        # Uncommitted frames stay in the WAL: recovery must tell them from committed ones.
        assert os.path.getsize(f"{db_path}-wal") >= wal_mib * MIB, kill_point

        db = get_db(db_path)
        no_kill_points(db)
        try:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            assert not tables & {"big", "big_v"}, f"killed at {kill_point}"
            assert [n for (n,) in db.execute("SELECT name FROM _migrations ORDER BY name")] == [
                "001_keep.sql",
                "002_more.sql",
            ]
            assert db.execute("SELECT x FROM keep ORDER BY x").fetchall() == [(1,), (2,)]

            assert run_migrations(db, folder) == ["003_long.sql"]
            assert db.execute("SELECT count(*) FROM big").fetchone() == (600_000,)
            assert run_migrations(db, folder) == []
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            db.close()
        assert _recorded(db_path) == ["001_keep.sql", "002_more.sql", "003_long.sql"]


# Six autocommitted chunks, each a statement of its own; safe to run again. The
# kill point sits in the second chunk, 150,000 rows in.
OUTSIDE_MIGRATION = "-- cf-db: no-transaction\n" + "".join(
    f"INSERT OR IGNORE INTO chunks (id, v)\n"
    f"  WITH RECURSIVE c(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM c "
    f"WHERE i < {start + 299_999})\n"
    f"  SELECT i, printf('chunk-%08d', i) FROM c WHERE kill_point('chunk 2', i = 450000);\n"
    for start in range(1, 1_800_000, 300_000)
)


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
    _kill(_start_migrator(db_path, folder, "chunk 2", tmp_path / "migrator.log"))

    db = get_db(db_path)
    no_kill_points(db)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert [n for (n,) in db.execute("SELECT name FROM _migrations")] == ["001_chunks.sql"]
        # Each chunk is one statement: the first is all there, the second not at all.
        assert db.execute("SELECT count(*), max(id) FROM chunks").fetchone() == (300_000, 300_000)
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
