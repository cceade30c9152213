"""The read-only views: plan_migrations, and status and verify on a connection or a path."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationPlan,
    MigrationRefusedError,
    MigrationSourceError,
    OpenError,
    PlannedMigration,
    get_db,
    migration_status,
    plan_migrations,
    run_migrations,
    verify_migrations,
)

Write = Callable[[str, "str | bytes"], Path]


def migrated(db_path: Path, migrations_dir: Path) -> None:
    db = get_db(db_path)
    try:
        run_migrations(db, migrations_dir)
    finally:
        db.close()


# -- plan_migrations -----------------------------------------------------------------


def test_the_plan_is_what_the_run_then_does(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Pending files with how each would run; run_migrations applies exactly those."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    run_migrations(db, migrations_dir)
    write_migration("002_b.sql", "BEGIN;\nCREATE TABLE b (x);\nINSERT INTO b VALUES (1);\nCOMMIT;")
    write_migration("003_rebuild.sql", "DROP TABLE a;")
    write_migration("004_vacuum.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    plan = plan_migrations(db, migrations_dir)
    assert plan == MigrationPlan(
        pending=(
            PlannedMigration("002_b.sql", 2, True, False, None),  # the wrapping pair dropped
            PlannedMigration("003_rebuild.sql", 1, True, True, None),
            PlannedMigration("004_vacuum.sql", 1, False, False, None),
        ),
        problems=(),
        notes=(),
    )
    assert plan.ok
    assert run_migrations(db, migrations_dir) == [p.name for p in plan.pending]
    assert plan_migrations(db, migrations_dir) == MigrationPlan((), (), ())


def test_the_plan_names_every_problem_the_run_stops_at(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Edited applied files and every refused pending file at once; the run raises the first."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    run_migrations(db, migrations_dir)
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x, y);")
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);\nVACUUM;\n")
    write_migration("003_c.sql", "INSERT INTO a VALUES (1);\nCOMMIT;\n")
    write_migration("004_d.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    plan = plan_migrations(db, migrations_dir)
    assert not plan.ok
    assert [(p.kind, p.name, p.line) for p in plan.problems] == [
        ("modified", "001_a.sql", None),
        ("refused", "002_b.sql", 2),
        ("refused", "003_c.sql", 2),
    ]
    assert "was edited since it was applied" in plan.problems[0].message
    refused = {p.name: p.problem for p in plan.pending}
    assert refused["002_b.sql"] == plan.problems[1]
    assert refused["004_d.sql"] is None  # would run, once the problems are fixed
    with pytest.raises(MigrationModifiedError):
        run_migrations(db, migrations_dir)
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    with pytest.raises(MigrationRefusedError) as caught:
        run_migrations(db, migrations_dir)
    assert str(caught.value) == plan.problems[1].message


def test_the_plan_notes_what_the_run_only_warns_about(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A deleted applied file and a pending file sorting before an applied one: notes, still ok."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration("003_c.sql", "CREATE TABLE IF NOT EXISTS c (x);")
    run_migrations(db, migrations_dir)
    (migrations_dir / "001_a.sql").unlink()
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    plan = plan_migrations(db, migrations_dir)
    assert plan.ok
    assert plan.notes == (
        "001_a.sql is recorded as applied but its file is gone; never delete an applied migration",
        "002_b.sql sorts before the already applied 003_c.sql; it would be applied anyway",
    )


def test_the_plan_of_a_missing_database_creates_nothing(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A path that does not exist: everything pending, and no file or folder appears."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    plan = plan_migrations(db_path, migrations_dir)
    assert [p.name for p in plan.pending] == ["001_a.sql"]
    assert not db_path.parent.exists()


def test_the_plan_never_writes(db_path: Path, migrations_dir: Path, write_migration: Write) -> None:
    """On an existing database, by path or connection: the file's bytes stay the same."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    migrated(db_path, migrations_dir)
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    before = db_path.read_bytes()
    readonly = get_db(db_path, readonly=True)
    try:
        by_connection = plan_migrations(readonly, migrations_dir)
    finally:
        readonly.close()
    assert plan_migrations(db_path, migrations_dir) == by_connection
    assert by_connection.pending == (PlannedMigration("002_b.sql", 1, True, False, None),)
    assert db_path.read_bytes() == before


# -- status and verify share one comparison ------------------------------------------


def test_status_and_verify_agree_on_every_state(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """applied/ok, modified, missing, pending: one comparison, two vocabularies."""
    for name in ("001_a.sql", "002_b.sql", "003_c.sql"):
        write_migration(name, f"CREATE TABLE IF NOT EXISTS t{name[:3]} (x);")
    run_migrations(db, migrations_dir)
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS changed (x);")
    (migrations_dir / "003_c.sql").unlink()
    write_migration("004_d.sql", "SELECT 1;")
    statuses = [(s.name, s.state) for s in migration_status(db, migrations_dir)]
    checks = [(c.name, c.state) for c in verify_migrations(db, migrations_dir)]
    assert statuses == [
        ("001_a.sql", "applied"),
        ("002_b.sql", "modified"),
        ("004_d.sql", "pending"),
        ("003_c.sql", "missing"),
    ]
    assert checks == [
        ("001_a.sql", "ok"),
        ("002_b.sql", "modified"),
        ("004_d.sql", "pending"),
        ("003_c.sql", "missing"),
    ]


def test_status_and_verify_by_path(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A path opens read-only: the same answer as a connection; a missing one is never created."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    assert [(s.name, s.state) for s in migration_status(db_path, migrations_dir)] == [
        ("001_a.sql", "pending")
    ]
    with pytest.raises(OpenError, match="does not exist; nothing to verify"):
        verify_migrations(db_path, migrations_dir)
    assert not db_path.parent.exists()
    migrated(db_path, migrations_dir)
    db = get_db(db_path)
    try:
        assert migration_status(str(db_path), migrations_dir) == migration_status(
            db, migrations_dir
        )
        assert verify_migrations(db_path, migrations_dir) == verify_migrations(db, migrations_dir)
    finally:
        db.close()


def test_a_key_goes_with_a_path_only(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """key= with a connection is a mistake (the connection was keyed when it was opened)."""
    write_migration("001_a.sql", "SELECT 1;")
    for view in (migration_status, verify_migrations, plan_migrations, run_migrations):
        with pytest.raises(TypeError, match="key= goes with a database path"):
            view(db, migrations_dir, key="secret")


# -- run_migrations on a path --------------------------------------------------------


def test_run_migrations_on_a_path_reads_the_folder_before_creating_the_database(
    db_path: Path, tmp_path: Path, write_migration: Write, migrations_dir: Path
) -> None:
    """A bad folder leaves no database; a good one is applied, and the connection closed."""
    with pytest.raises(MigrationSourceError, match="does not exist"):
        run_migrations(db_path, tmp_path / "nope")
    write_migration("001_a.sql", b"SELECT '\xff';")
    with pytest.raises(MigrationSourceError, match="not valid UTF-8"):
        run_migrations(db_path, migrations_dir)
    assert not db_path.parent.exists()
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    assert run_migrations(db_path, migrations_dir) == ["001_a.sql"]
    assert run_migrations(str(db_path), migrations_dir) == []
    # The last connection to a WAL database to close checkpoints and removes the -wal file.
    assert not Path(f"{db_path}-wal").exists()


# -- the dry run that runs -----------------------------------------------------------


def fingerprint(db_path: Path) -> dict[str, str | None]:
    """The database file's and -wal's SHA-256, and whether -shm is there (its read marks move)."""
    found: dict[str, str | None] = {}
    for suffix in ("", "-wal", "-journal"):
        path = Path(f"{db_path}{suffix}")
        found[suffix] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    found["-shm"] = "present" if Path(f"{db_path}-shm").exists() else None
    return found


def test_the_dry_run_finds_what_only_running_finds(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A misspelt table passes the judges; run on a copy it fails with the run's own message."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS notes (body TEXT);")
    write_migration(
        "002_b.sql", "INSERT INTO notes VALUES ('a');\n\nINSERT INTO nots VALUES ('b');"
    )
    write_migration("003_c.sql", "CREATE TABLE IF NOT EXISTS c (x);")
    assert plan_migrations(db, migrations_dir).ok  # judged only: it cannot see this
    plan = plan_migrations(db, migrations_dir, execute=True)
    assert not plan.ok
    assert plan.executed
    (problem,) = plan.problems
    assert (problem.kind, problem.name, problem.line) == ("failed", "002_b.sql", 3)
    assert [(p.name, p.seconds is not None, p.problem) for p in plan.pending] == [
        ("001_a.sql", True, None),
        ("002_b.sql", False, problem),
        ("003_c.sql", False, None),
    ]
    assert plan.notes == ("not run on the copy, since the run stops at 002_b.sql: 003_c.sql",)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == []
    with pytest.raises(MigrationFailedError) as caught:
        run_migrations(db, migrations_dir)
    assert str(caught.value) == problem.message


def _killed_writer(db_path: Path, migrations_dir: Path) -> None:
    """A process that migrates, commits a row and dies by SIGKILL: a -wal full of commits."""
    script = (
        "import os, signal, sys\n"
        "from circuitforge_core.db import get_db, run_migrations\n"
        "db = get_db(sys.argv[1])\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "run_migrations(db, sys.argv[2])\n"
        "db.execute(\"INSERT INTO notes VALUES ('committed, not checkpointed')\")\n"
        "db.commit()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(db_path), str(migrations_dir)], timeout=60
    )
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize(
    "state",
    [
        "closed cleanly",
        "open in another connection",
        pytest.param("left by a killed writer", marks=pytest.mark.slow),
        "DELETE mode",
    ],
)
def test_the_dry_run_leaves_the_database_as_it_found_it(
    db_path: Path, migrations_dir: Path, write_migration: Write, state: str
) -> None:
    """Byte for byte, and the same -wal/-shm present or absent, whatever state the file is in."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS notes (body TEXT);")
    db_path.parent.mkdir(parents=True)
    other = None
    if state == "closed cleanly":
        migrated(db_path, migrations_dir)
    elif state == "open in another connection":
        other = get_db(db_path)
        other.execute("PRAGMA wal_autocheckpoint=0")
        run_migrations(other, migrations_dir)
    elif state == "left by a killed writer":
        _killed_writer(db_path, migrations_dir)
    else:  # a product database never opened by get_db: rollback journal, not WAL
        with contextlib.closing(sqlite3.connect(db_path)) as old:
            old.execute("CREATE TABLE notes (body TEXT)")
            old.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
            old.execute("INSERT INTO _migrations (name) VALUES ('001_a.sql')")
            old.commit()
    write_migration(
        "002_fill.sql",
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)\n"
        "INSERT INTO notes SELECT hex(randomblob(100)) FROM c;\n",
    )
    write_migration("003_vacuum.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    before = fingerprint(db_path)
    listing = sorted(os.listdir(db_path.parent))
    try:
        plan = plan_migrations(db_path, migrations_dir, execute=True)
        assert plan.ok, plan.problems
        assert [(p.name, p.seconds is not None) for p in plan.pending] == [
            ("002_fill.sql", True),
            ("003_vacuum.sql", True),
        ]
        assert fingerprint(db_path) == before
        assert sorted(os.listdir(db_path.parent)) == listing
    finally:
        if other is not None:
            other.close()
    if state == "left by a killed writer":  # the copy saw the commits still in the -wal
        with contextlib.closing(get_db(db_path)) as check:
            assert check.execute("SELECT count(*) FROM notes").fetchone() == (1,)


def test_the_dry_run_of_a_missing_database_creates_nothing(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """An empty scratch database stands in: runtime errors found, no file or folder made."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration("002_b.sql", "INSERT INTO b VALUES (1);")
    plan = plan_migrations(db_path, migrations_dir, execute=True)
    assert [(p.kind, p.name, p.line) for p in plan.problems] == [("failed", "002_b.sql", 1)]
    assert "no such table: b" in plan.problems[0].message
    assert not db_path.parent.exists()


def test_no_transaction_files_foreign_keys_and_recovery_in_the_dry_run(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """The runner's own per-file code runs on the copy: all its checks apply."""
    db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE child (id INTEGER PRIMARY KEY, score REAL, "
        "parent_id INTEGER REFERENCES parent (id))"
    )
    db.execute("INSERT INTO parent VALUES (1)")
    db.execute("INSERT INTO child VALUES (1, NULL, 1)")
    db.commit()
    write_migration("001_score.sql", "ALTER TABLE child ADD COLUMN score REAL;")
    write_migration("002_nt.sql", "-- cf-db: no-transaction\nCREATE TABLE t (x);\nVACUUM;\n")
    write_migration("003_drop.sql", "DROP TABLE parent;")
    plan = plan_migrations(db, migrations_dir, execute=True)
    assert plan.notes[0].startswith("migration 001_score.sql, line 1: column score of table child")
    assert "it would skip" in plan.notes[0]
    (problem,) = plan.problems
    assert (problem.kind, problem.name, problem.line) == ("failed", "003_drop.sql", None)
    assert "foreign keys point at nothing" in problem.message
    assert [p.seconds is not None for p in plan.pending] == [True, True, False]
    write_migration("001_score.sql", "ALTER TABLE child ADD COLUMN score TEXT;")
    plan = plan_migrations(db, migrations_dir, execute=True)
    assert [(p.kind, p.name, p.line) for p in plan.problems] == [("failed", "001_score.sql", 1)]
    assert "`REAL`" in plan.problems[0].message
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master")} == {"parent", "child"}


def test_the_dry_run_on_a_connection_runs_as_that_connection_would(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """The copy takes the caller's settings: an orphan row fails only where keys are enforced."""
    write_migration(
        "001_a.sql",
        "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);\n"
        "CREATE TABLE IF NOT EXISTS child (parent_id INTEGER REFERENCES parent (id));\n"
        "INSERT INTO child VALUES (42);\n",
    )
    get_db(db_path).close()
    plain = sqlite3.connect(db_path)  # the old factory: foreign keys not enforced
    enforced = get_db(db_path)
    try:
        assert plan_migrations(plain, migrations_dir, execute=True).ok
        (problem,) = plan_migrations(enforced, migrations_dir, execute=True).problems
        assert "FOREIGN KEY constraint failed" in problem.message
        assert plain.execute("PRAGMA foreign_keys").fetchone() == (0,)
    finally:
        plain.close()
        enforced.close()


@pytest.mark.slow
def test_the_dry_run_of_an_encrypted_database(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """By path with its key the copy is encrypted alike; a keyed connection cannot be copied."""
    pytest.importorskip("sqlcipher3")
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    secret = "a passphrase for the dry run"
    run_migrations(db_path, migrations_dir, key=secret)
    write_migration("002_b.sql", "INSERT INTO a VALUES (1);\nINSERT INTO nope VALUES (2);")
    before = fingerprint(db_path)
    plan = plan_migrations(db_path, migrations_dir, key=secret, execute=True)
    assert [(p.kind, p.name, p.line) for p in plan.problems] == [("failed", "002_b.sql", 2)]
    assert fingerprint(db_path) == before
    keyed = get_db(db_path, key=secret)
    try:
        with pytest.raises(TypeError, match="pass the database's path and key="):
            plan_migrations(keyed, migrations_dir, execute=True)
    finally:
        keyed.close()


def test_the_dry_run_of_a_connection_in_a_transaction_is_refused(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """As run_migrations: the copy would hold the caller's uncommitted writes."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(MigrationError, match="no open transaction"):
        plan_migrations(db, migrations_dir, execute=True)
    db.rollback()
