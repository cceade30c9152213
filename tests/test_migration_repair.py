"""accept_checksum and baseline: deliberate, logged changes to a database's migration history."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    BaselineRefusedError,
    MigrationError,
    MigrationModifiedError,
    MigrationSourceError,
    OpenError,
    accept_checksum,
    baseline,
    get_db,
    migration_status,
    run_migrations,
)

Write = Callable[[str, "str | bytes"], Path]


def rows(db_path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(
            "SELECT name, checksum, duration_ms FROM _migrations ORDER BY rowid"
        ).fetchall()
    finally:
        db.close()


def test_accepting_an_edited_file_lets_the_runner_go_on(
    db_path: Path, migrations_dir: Path, write_migration: Write, caplog: pytest.LogCaptureFixture
) -> None:
    """After review the new text is recorded; nothing runs; the log names file, database, who."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    run_migrations(db_path, migrations_dir)
    write_migration("001.sql", "-- a comment added after the fact\nCREATE TABLE t (a);")
    write_migration("002.sql", "CREATE TABLE u (b);")
    with pytest.raises(MigrationModifiedError):
        run_migrations(db_path, migrations_dir)
    old_checksum = rows(db_path)[0][1]
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
        result = accept_checksum(db_path, migrations_dir, "001.sql")
    assert result.changed
    assert result.old == old_checksum
    assert result.new == rows(db_path)[0][1] != old_checksum
    assert result.drift.clean  # a comment changes no schema
    (record,) = [r for r in caplog.records if "accepted the edited migration" in r.message]
    assert "001.sql" in record.message
    assert str(db_path) in record.message
    assert "@" in record.message  # user@host
    assert run_migrations(db_path, migrations_dir) == ["002.sql"]
    again = accept_checksum(db_path, migrations_dir, "001.sql")
    assert not again.changed


def test_an_edit_that_changes_the_schema_shows_as_drift(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Accepting never runs the new text: the schema it would build is reported as drift."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    run_migrations(db_path, migrations_dir)
    write_migration("001.sql", "CREATE TABLE t (a, b);")
    result = accept_checksum(db_path, migrations_dir, "001.sql")
    assert [str(d) for d in result.drift.differences] == [
        "column t.b is missing (the migrations make (no type))"
    ]


def test_accept_refuses_what_cannot_be_accepted(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A file not in the folder, one never applied, a database that does not exist."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    with pytest.raises(OpenError, match="does not exist"):
        accept_checksum(db_path, migrations_dir, "001.sql")
    assert not db_path.exists()
    db = get_db(db_path)
    with pytest.raises(MigrationError, match="not recorded as applied"):
        accept_checksum(db, migrations_dir, "001.sql")
    with pytest.raises(MigrationSourceError, match=r"has no migration 009\.sql"):
        accept_checksum(db, migrations_dir, "009.sql")
    db.close()


def test_accept_on_an_old_runner_table(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A table without checksums is adopted first; the named file gets its current checksum."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    db_path.parent.mkdir()
    old = sqlite3.connect(db_path)
    old.executescript(
        "CREATE TABLE t (a);"
        "CREATE TABLE _migrations "
        "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP);"
        "INSERT INTO _migrations (name) VALUES ('001.sql');"
    )
    old.close()
    result = accept_checksum(db_path, migrations_dir, "001.sql")
    assert result.changed
    assert result.old is None
    assert [s.state for s in migration_status(db_path, migrations_dir)] == ["applied"]


def test_baseline_marks_files_without_running_them(
    db_path: Path, migrations_dir: Path, write_migration: Write, caplog: pytest.LogCaptureFixture
) -> None:
    """A database made from a dump: files up to NAME recorded (no duration), the rest pending."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    write_migration("002.sql", "CREATE INDEX t_a ON t (a);")
    write_migration("003.sql", "CREATE TABLE u (b);")
    db = get_db(db_path)
    db.executescript("CREATE TABLE t (a); CREATE INDEX t_a ON t (a); INSERT INTO t VALUES (1);")
    db.close()
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
        result = baseline(db_path, migrations_dir, "002.sql")
    assert result.marked == ("001.sql", "002.sql")
    assert result.already == ()
    assert [(name, duration) for name, _, duration in rows(db_path)] == [
        ("001.sql", None),
        ("002.sql", None),
    ]
    assert any("baseline of" in r.message and str(db_path) in r.message for r in caplog.records)
    assert run_migrations(db_path, migrations_dir) == ["003.sql"]
    assert baseline(db_path, migrations_dir, "002.sql").marked == ()


def test_baseline_refuses_a_schema_that_does_not_match(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A missing index: refused, naming the difference, nothing recorded; no-check overrides."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    write_migration("002.sql", "CREATE INDEX t_a ON t (a);")
    db = get_db(db_path)
    db.execute("CREATE TABLE t (a)")
    db.commit()
    with pytest.raises(BaselineRefusedError, match="index t_a is missing") as caught:
        baseline(db, migrations_dir, "002.sql")
    assert [d.name for d in caught.value.differences] == ["t_a"]  # type: ignore[attr-defined]
    assert db.execute("SELECT name FROM sqlite_master WHERE name = '_migrations'").fetchall() == []
    assert baseline(db, migrations_dir, "001.sql").marked == ("001.sql",)
    assert baseline(db, migrations_dir, "002.sql", check_schema=False).marked == ("002.sql",)
    db.close()
    with pytest.raises(MigrationSourceError, match=r"no migration 007\.sql"):
        baseline(db_path, migrations_dir, "007.sql")
