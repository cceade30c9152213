"""The read-only views: plan_migrations, and status and verify on a connection or a path."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from circuitforge_core.db import (
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


@pytest.fixture
def db(db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = get_db(db_path)
    yield connection
    connection.close()


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
