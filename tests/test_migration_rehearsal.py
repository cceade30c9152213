"""check_migrations: every file on an empty and a seeded scratch database; seed_rows."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import get_db
from circuitforge_core.db.migrations.rehearsal import check_migrations, row_counts, seed_rows

Write = Callable[[str, "str | bytes"], Path]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "notes" / "migrations"

NOTES = "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL);"


def problems(folder: Path, **options: object) -> list[tuple[str, str]]:
    report = check_migrations(folder, **options)  # type: ignore[arg-type]
    return [(p.name, p.check) for p in report.problems]


def test_the_example_product_passes(tmp_path: Path) -> None:
    """The notes example's migrations are sound: no problem, every file checked."""
    report = check_migrations(EXAMPLES, workdir=tmp_path)
    assert report.ok, str(report)
    assert report.checked == tuple(sorted(p.name for p in EXAMPLES.glob("*.sql")))
    assert list(tmp_path.iterdir()) == []  # scratch files removed


def test_a_file_failing_on_an_empty_database_stops_the_check(
    migrations_dir: Path, write_migration: Write
) -> None:
    """The failing file is named with its line and SQLite's words; later files are noted."""
    write_migration("001.sql", NOTES)
    write_migration("002.sql", "\n\nCREATE TABLE broken (;")
    write_migration("003.sql", "CREATE TABLE later (x);")
    report = check_migrations(migrations_dir)
    (problem,) = report.problems
    assert (problem.name, problem.check, problem.line) == ("002.sql", "empty", 3)
    assert "syntax error" in problem.message
    assert report.notes == ("not checked, as they build on 002.sql: 003.sql",)
    assert report.checked == ("001.sql",)


def test_a_file_that_only_fails_with_rows(migrations_dir: Path, write_migration: Write) -> None:
    """ADD COLUMN NOT NULL without a default, a UNIQUE index: what real data hits."""
    write_migration("001.sql", NOTES)
    write_migration("002.sql", "ALTER TABLE notes ADD COLUMN owner TEXT NOT NULL;")
    report = check_migrations(migrations_dir)
    (problem,) = report.problems
    assert problem.check == "rows"
    assert "Cannot add a NOT NULL column" in problem.message
    assert str(problem).startswith("002.sql, line 1: runs on an empty database but fails on one")


def test_lost_rows_are_found_unless_allowed(migrations_dir: Path, write_migration: Write) -> None:
    """A DELETE, a rebuild that filters, a dropped table: each loses rows."""
    write_migration("001.sql", NOTES + "CREATE TABLE old (x TEXT);")
    write_migration(
        "002_rebuild.sql",
        "CREATE TABLE notes_new (id INTEGER PRIMARY KEY, title TEXT NOT NULL);\n"
        "INSERT INTO notes_new SELECT * FROM notes WHERE id > 100;\n"
        "DROP TABLE notes;\n"
        "ALTER TABLE notes_new RENAME TO notes;",
    )
    write_migration("003_drop.sql", "DROP TABLE old;")
    report = check_migrations(migrations_dir, rerun="off")
    assert [(p.name, p.check) for p in report.problems] == [
        ("002_rebuild.sql", "lost rows"),
        ("003_drop.sql", "lost rows"),
    ]
    assert "notes went from 1 to 0 rows" in report.problems[0].message
    assert "dropped old (2) and only 0 row(s) reappeared" in report.problems[1].message
    report = check_migrations(
        migrations_dir, rerun="off", allow_row_loss=["002_rebuild.sql", "003_drop.sql"]
    )
    assert report.ok
    assert any(note.startswith("003_drop.sql loses rows, as allowed") for note in report.notes)


def test_a_rename_keeps_its_rows(migrations_dir: Path, write_migration: Write) -> None:
    """Rows that move to a new table under a new name are not lost."""
    write_migration("001.sql", NOTES)
    write_migration("002.sql", "ALTER TABLE notes RENAME TO memos;")
    assert check_migrations(migrations_dir).ok


def test_dangling_references_fail(migrations_dir: Path, write_migration: Write) -> None:
    """A rebuild that renumbers parents leaves children pointing at nothing."""
    write_migration(
        "001.sql",
        NOTES + "CREATE TABLE tags (id INTEGER PRIMARY KEY, note_id INTEGER REFERENCES notes(id));",
    )
    write_migration(
        "002.sql",
        "CREATE TABLE notes_new (id INTEGER PRIMARY KEY, title TEXT NOT NULL);\n"
        "INSERT INTO notes_new SELECT id + 1000, title FROM notes;\n"
        "DROP TABLE notes;\n"
        "ALTER TABLE notes_new RENAME TO notes;",
    )
    report = check_migrations(migrations_dir, rerun="off")
    (problem,) = report.problems
    assert problem.check == "foreign keys"
    assert "tags rowid 1 -> notes" in problem.message


def test_a_foreign_key_sqlite_cannot_enforce(migrations_dir: Path, write_migration: Write) -> None:
    """A reference to a column that is not unique is a 'foreign key mismatch'."""
    write_migration("001.sql", "CREATE TABLE p (code TEXT);")
    write_migration("002.sql", "CREATE TABLE c (code TEXT REFERENCES p(code));")
    assert problems(migrations_dir) == [("002.sql", "foreign keys")]


def test_reruns_from_a_half_applied_state(migrations_dir: Path, write_migration: Write) -> None:
    """What the old runner left behind must run again: guards pass, bare DDL and seeds fail."""
    write_migration("001.sql", NOTES)
    write_migration(
        "002_guarded.sql",
        "CREATE TABLE IF NOT EXISTS a (x);\nCREATE INDEX IF NOT EXISTS a_x ON a (x);",
    )
    write_migration("003_bare.sql", "CREATE TABLE b (x);\nCREATE INDEX b_x ON b (x);")
    write_migration(
        "004_seed.sql",
        "CREATE TABLE IF NOT EXISTS settings (k TEXT, v TEXT);\n"
        "INSERT INTO settings VALUES ('theme', 'dark');\n"
        "CREATE INDEX IF NOT EXISTS settings_k ON settings (k);",
    )
    write_migration(
        "005_columns.sql", "ALTER TABLE notes ADD COLUMN a;\nALTER TABLE notes ADD COLUMN b;"
    )
    write_migration(
        "006_wrapped.sql", "BEGIN;\nCREATE TABLE c (x);\nCREATE INDEX c_x ON c (x);\nCOMMIT;"
    )
    report = check_migrations(migrations_dir)
    found = {p.name: p.message for p in report.problems}
    assert sorted(found) == ["003_bare.sql", "004_seed.sql"]
    assert "table b already exists. Guard it with IF NOT EXISTS" in found["003_bare.sql"]
    assert "settings holds 2 rows instead of 1" in found["004_seed.sql"]
    assert "only its first 1 of 2 statements" in found["003_bare.sql"]
    assert all(p.check == "rerun" for p in report.problems)
    assert check_migrations(migrations_dir, rerun="off").ok
    assert check_migrations(migrations_dir, rerun="no-transaction").ok


def test_no_transaction_files_are_rerun_in_the_narrow_scope(
    migrations_dir: Path, write_migration: Write
) -> None:
    """The current runner applies these statement by statement: they must be rerun-safe."""
    write_migration("001.sql", NOTES)
    write_migration("002.sql", "-- cf-db: no-transaction\nCREATE TABLE x (a);\nVACUUM;")
    assert problems(migrations_dir, rerun="no-transaction") == [("002.sql", "rerun")]


def test_unknown_rerun_scope_is_refused(migrations_dir: Path) -> None:
    """A typo in the scope is an error, not a silently skipped check."""
    with pytest.raises(ValueError, match="rerun must be"):
        check_migrations(migrations_dir, rerun="some")  # type: ignore[arg-type]


def test_seed_rows_fits_every_kind_of_table(tmp_path: Path) -> None:
    """Types, STRICT, WITHOUT ROWID, CHECK lists, self and composite references, FTS5."""
    db = get_db(tmp_path / "seed.db")
    db.executescript(
        """
        CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE,
            joined DATETIME NOT NULL, active BOOLEAN NOT NULL, score REAL, avatar BLOB,
            status TEXT NOT NULL CHECK (status IN ('new', 'verified')));
        CREATE TABLE teams (org TEXT NOT NULL, code INTEGER NOT NULL, PRIMARY KEY (org, code))
            WITHOUT ROWID;
        CREATE TABLE members (user_id INTEGER NOT NULL REFERENCES users,
            org TEXT NOT NULL, code INTEGER NOT NULL,
            FOREIGN KEY (org, code) REFERENCES teams (org, code));
        CREATE TABLE folders (id INTEGER PRIMARY KEY,
            parent INTEGER NOT NULL REFERENCES folders(id));
        CREATE TABLE strict_one (a INT NOT NULL, b REAL, c TEXT, d BLOB, e ANY) STRICT;
        CREATE TABLE computed (a INTEGER, b INTEGER GENERATED ALWAYS AS (a * 2) STORED);
        CREATE TABLE only_defaults (id INTEGER PRIMARY KEY);
        CREATE VIRTUAL TABLE search USING fts5(title, body);
        CREATE TABLE bounded (n INTEGER NOT NULL CONSTRAINT small CHECK (n BETWEEN 0 AND 1));
        """
    )
    for round_number in (1, 2, 3):
        assert seed_rows(db, round_number) == {}
    counts = row_counts(db)
    assert counts == {
        "bounded": 3,
        "computed": 3,
        "folders": 3,
        "members": 3,
        "only_defaults": 3,
        "search": 3,
        "strict_one": 3,
        "teams": 3,
        "users": 3,
    }
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


def test_seed_rows_reports_tables_it_cannot_fill(tmp_path: Path) -> None:
    """A CHECK no generated value meets is reported, the other tables still get their row."""
    db = get_db(tmp_path / "seed.db")
    db.executescript(
        "CREATE TABLE odd (n TEXT CHECK (n GLOB '[0-9][0-9][0-9]-x'));CREATE TABLE fine (a TEXT);"
    )
    refused = seed_rows(db)
    assert list(refused) == ["odd"]
    assert "CHECK constraint failed" in refused["odd"]
    assert row_counts(db) == {"fine": 1, "odd": 0}
    db.close()


def test_unseedable_tables_are_noted_in_the_report(
    migrations_dir: Path, write_migration: Write
) -> None:
    """The report says which tables carried no rows, so a pass is not over-read."""
    write_migration("001.sql", "CREATE TABLE odd (n TEXT CHECK (n GLOB '[0-9]-x'));")
    write_migration("002.sql", "CREATE INDEX odd_n ON odd (n);")
    report = check_migrations(migrations_dir)
    assert report.ok
    assert any(note.startswith("table odd got no generated row") for note in report.notes)


def test_report_reads_as_a_summary(migrations_dir: Path, write_migration: Write) -> None:
    """str(report): a header line, one line per problem and note."""
    write_migration("001.sql", NOTES)
    write_migration("002.sql", "DELETE FROM notes;")
    text = str(check_migrations(migrations_dir))
    assert text.splitlines()[0] == (
        f"cf-db migration check of {migrations_dir}: 2 file(s) checked, 1 problem(s)"
    )
    assert text.splitlines()[1].startswith("  problem: 002.sql: loses rows: notes went from 1 to 0")


def test_it_never_touches_a_real_database(
    tmp_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Only scratch files in its own temporary folder; the folder's files are left as they are."""
    write_migration("001.sql", NOTES)
    before = {p.name: p.read_bytes() for p in migrations_dir.iterdir()}
    check_migrations(migrations_dir)
    assert {p.name: p.read_bytes() for p in migrations_dir.iterdir()} == before
    assert not list(migrations_dir.parent.glob("*.db"))
    assert sqlite3.complete_statement(NOTES)
