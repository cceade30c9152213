"""A migration's pragmas, attachments and TEMP objects end with the file.

Left behind they change how the next file of the same call runs (so the
schema would depend on how many files were pending) and how the
application's next statement on the connection behaves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    MigrationFailedError,
    MigrationRefusedError,
    get_db,
    lint_report,
    run_migrations,
)

Write = Callable[[str, "str | bytes"], Path]


def schema(db: sqlite3.Connection) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
        "AND name != '_migrations' ORDER BY name"
    ).fetchall()


# -- legacy_alter_table: the schema must not depend on how many files were pending ----

NOTES_AND_VIEW = """
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
CREATE TABLE audit (note_id INTEGER);
CREATE TRIGGER notes_audit AFTER INSERT ON notes BEGIN
    INSERT INTO audit VALUES (new.id);
END;
CREATE VIEW recent AS SELECT id, body FROM notes ORDER BY id DESC;
INSERT INTO notes (body) VALUES ('first');
"""
# The rebuild docs/migrations.md describes, with legacy_alter_table so that the trigger
# naming the table does not make the rename fail.
REBUILD_WITH_LEGACY_ALTER = """
PRAGMA legacy_alter_table=ON;
CREATE TABLE notes_new (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT '');
INSERT INTO notes_new (id, body) SELECT id, coalesce(body, '') FROM notes;
DROP TABLE notes;
ALTER TABLE notes_new RENAME TO notes;
CREATE TRIGGER IF NOT EXISTS notes_audit AFTER INSERT ON notes BEGIN
    INSERT INTO audit VALUES (new.id);
END;
"""
RENAME_TABLE = "ALTER TABLE notes RENAME TO memos;\n"


def test_legacy_alter_table_ends_with_its_file(
    tmp_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """One call or two: the same schema, a working view, and the pragma back off."""
    write_migration("001_notes.sql", NOTES_AND_VIEW)
    write_migration("002_rebuild.sql", REBUILD_WITH_LEGACY_ALTER)
    in_one = get_db(tmp_path / "one.db")
    in_two = get_db(tmp_path / "two.db")
    try:
        run_migrations(in_two, migrations_dir)  # 001 and 002 in an earlier deploy
        write_migration("003_rename.sql", RENAME_TABLE)
        assert run_migrations(in_two, migrations_dir) == ["003_rename.sql"]
        assert len(run_migrations(in_one, migrations_dir)) == 3  # all pending at once
        assert in_one.execute("PRAGMA legacy_alter_table").fetchone() == (0,)
        assert schema(in_one) == schema(in_two)
        # The view follows the renamed table only when the rename ran without the pragma.
        assert 'FROM "memos"' in dict(schema(in_one))["recent"]
        assert in_one.execute("SELECT body FROM recent").fetchall() == [("first",)]
    finally:
        in_one.close()
        in_two.close()


# -- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "read"),
    [
        ("PRAGMA recursive_triggers=ON", "PRAGMA recursive_triggers"),
        ("PRAGMA busy_timeout=1", "PRAGMA busy_timeout"),
        ("PRAGMA main.cache_size=-77", "PRAGMA cache_size"),
        ("PRAGMA automatic_index=OFF", "PRAGMA automatic_index"),
        ("PRAGMA reverse_unordered_selects=ON", "PRAGMA reverse_unordered_selects"),
        ("PRAGMA case_sensitive_like=ON", "SELECT 'a' LIKE 'A'"),
        ("PRAGMA secure_delete=FAST", "PRAGMA secure_delete"),
        ("PRAGMA trusted_schema=OFF", "PRAGMA trusted_schema"),
        ("PRAGMA cell_size_check=ON", "PRAGMA cell_size_check"),
        ("PRAGMA ignore_check_constraints=ON", "PRAGMA ignore_check_constraints"),
        ("PRAGMA writable_schema=ON", "PRAGMA writable_schema"),
        ("PRAGMA threads=2", "PRAGMA threads"),
        ("PRAGMA temp_store=FILE", "PRAGMA temp_store"),
        ("PRAGMA mmap_size=65536", "PRAGMA mmap_size"),
        ("PRAGMA journal_size_limit=4096", "PRAGMA journal_size_limit"),
        ("PRAGMA max_page_count=1000000", "PRAGMA max_page_count"),
        ("PRAGMA wal_autocheckpoint=5", "PRAGMA wal_autocheckpoint"),
        ("PRAGMA soft_heap_limit=100000000", "PRAGMA soft_heap_limit"),
        ("PRAGMA analysis_limit=10", "PRAGMA analysis_limit"),
        ("PRAGMA legacy_alter_table(1)", "PRAGMA legacy_alter_table"),
        ("PRAGMA read_uncommitted=ON", "PRAGMA read_uncommitted"),
        ("PRAGMA fullfsync=ON", "PRAGMA fullfsync"),
        ("PRAGMA count_changes=ON", "PRAGMA count_changes"),
    ],
)
def test_a_setting_the_file_changes_is_put_back(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    setting: str,
    read: str,
) -> None:
    """Whatever the file set, the connection has its value from before the file afterwards."""
    before = db.execute(read).fetchall()
    write_migration("001_tune.sql", f"CREATE TABLE IF NOT EXISTS t (x);\n{setting};\n")
    assert run_migrations(db, migrations_dir) == ["001_tune.sql"]
    assert db.execute(read).fetchall() == before


def test_settings_of_a_no_transaction_file_are_put_back(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """synchronous and locking_mode, which only a no-transaction file can change."""
    write_migration(
        "001_nt.sql",
        "-- cf-db: no-transaction\nPRAGMA synchronous=OFF;\nPRAGMA locking_mode=EXCLUSIVE;\n"
        "CREATE TABLE IF NOT EXISTS t (x);\n",
    )
    run_migrations(db, migrations_dir)
    assert db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL, as get_db set it
    assert db.execute("PRAGMA locking_mode").fetchone() == ("normal",)
    other = get_db(Path(db.execute("PRAGMA database_list").fetchone()[2]), busy_timeout=0.2)
    try:
        other.execute("INSERT INTO t VALUES (1)")  # the exclusive lock is gone
        other.commit()
    finally:
        other.close()


def test_settings_are_put_back_after_a_failing_file(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A file that fails after its PRAGMA leaves the setting as it found it."""
    write_migration(
        "001_bad.sql", "PRAGMA recursive_triggers=ON;\nINSERT INTO nowhere VALUES (1);\n"
    )
    with pytest.raises(MigrationFailedError):
        run_migrations(db, migrations_dir)
    assert db.execute("PRAGMA recursive_triggers").fetchone() == (0,)


def test_query_only_in_a_file_fails_it_and_is_put_back(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """query_only=ON stops the file's own row from being written; the connection stays writable."""
    write_migration("001_ro.sql", "CREATE TABLE a (x);\nPRAGMA query_only=ON;\n")
    with pytest.raises(MigrationFailedError, match=r"001_ro\.sql.*readonly database"):
        run_migrations(db, migrations_dir)
    assert db.execute("PRAGMA query_only").fetchone() == (0,)
    assert "a" not in dict(schema(db))
    db.execute("CREATE TABLE b (x)")  # writable again


# -- attached databases -----------------------------------------------------------------


def test_a_database_the_file_attaches_is_detached(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, tmp_path: Path
) -> None:
    """What the file wrote to the attached database commits with it; the attachment ends."""
    side = tmp_path / "side.db"
    write_migration(
        "001_side.sql",
        f"ATTACH DATABASE '{side}' AS side;\n"
        "CREATE TABLE side.archive (x);\nINSERT INTO side.archive VALUES (1);\n",
    )
    write_migration("002_next.sql", "CREATE TABLE archive (y);\n")  # no `side` to shadow it
    assert run_migrations(db, migrations_dir) == ["001_side.sql", "002_next.sql"]
    assert [row[1] for row in db.execute("PRAGMA database_list")] == ["main"]
    with sqlite3.connect(side) as check:
        assert check.execute("SELECT x FROM archive").fetchall() == [(1,)]
    check.close()


def test_an_attachment_ends_with_a_failing_file_too(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, tmp_path: Path
) -> None:
    write_migration(
        "001_side.sql",
        f"ATTACH DATABASE '{tmp_path / 'side.db'}' AS side;\nINSERT INTO nowhere VALUES (1);\n",
    )
    with pytest.raises(MigrationFailedError):
        run_migrations(db, migrations_dir)
    assert [row[1] for row in db.execute("PRAGMA database_list")] == ["main"]


# -- TEMP objects ----------------------------------------------------------------------


def test_temp_objects_the_file_creates_are_dropped(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A TEMP table and a TEMP trigger on a real table do not outlive the file."""
    db.execute("CREATE TEMP TABLE mine (x)")  # the caller's own: kept
    write_migration(
        "001_temp.sql",
        "CREATE TABLE t (x);\nCREATE TEMP TABLE scratch AS SELECT 1 AS x;\n"
        "CREATE TEMPORARY TRIGGER t_spy AFTER INSERT ON main.t BEGIN\n"
        "    INSERT INTO scratch VALUES (new.x);\nEND;\n"
        "CREATE VIEW temp.peek AS SELECT * FROM scratch;\n"
        "INSERT INTO t SELECT x FROM scratch;\n",
    )
    assert run_migrations(db, migrations_dir) == ["001_temp.sql"]
    assert db.execute("SELECT type, name FROM temp.sqlite_master").fetchall() == [("table", "mine")]
    db.execute("INSERT INTO t VALUES (2)")  # no trigger fires into a table that is gone
    db.commit()
    assert db.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,)]


# -- what cannot be put back is refused ------------------------------------------------


@pytest.mark.parametrize(
    "pragma",
    ["PRAGMA hard_heap_limit=1000000;", "PRAGMA temp_store_directory='/tmp';"],
)
def test_a_pragma_of_the_whole_process_is_refused_up_front(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, pragma: str
) -> None:
    """It cannot be put back when the file ends: refused before any file runs; lint says so."""
    write_migration("001_fine.sql", "CREATE TABLE a (x);")
    write_migration("002_process.sql", f"CREATE TABLE b (x);\n{pragma}\n")
    before = db.execute("PRAGMA hard_heap_limit").fetchone()
    with pytest.raises(MigrationRefusedError, match="whole process") as caught:
        run_migrations(db, migrations_dir)
    assert (caught.value.name, caught.value.line) == ("002_process.sql", 2)
    assert "a" not in dict(schema(db))
    assert db.execute("PRAGMA hard_heap_limit").fetchone() == before
    findings = [(f.file, f.line, f.code) for f in lint_report(migrations_dir).findings]
    assert ("002_process.sql", 2, "process-pragma") in findings


# -- ordinary files pay nothing -----------------------------------------------------------


def test_a_file_that_changes_no_connection_state_reads_none(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """No PRAGMA, ATTACH or TEMP: no settings, attachments or temp objects are read."""
    write_migration("001_a.sql", "CREATE TABLE a (x);\nINSERT INTO a VALUES (1);\n")
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    try:
        run_migrations(db, migrations_dir)
    finally:
        db.set_trace_callback(None)
    assert not [s for s in seen if "pragma_list" in s or "database_list" in s or "temp." in s]
