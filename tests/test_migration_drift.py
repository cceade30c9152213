"""schema_drift: a live file against what its applied migrations build, each difference named."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from circuitforge_core.db import get_db, run_migrations
from circuitforge_core.db.migrations.drift import (
    SchemaDifference,
    compare_schemas,
    read_schema,
    schema_drift,
    sql_tokens,
)

Write = Callable[[str, "str | bytes"], Path]

RICH_SCHEMA = """
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL CHECK (length(title) > 0),
    body TEXT DEFAULT '',
    created TEXT NOT NULL DEFAULT (datetime('now')),
    words INTEGER GENERATED ALWAYS AS (length(body)) VIRTUAL
);
CREATE TABLE tags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
    tag TEXT COLLATE NOCASE,
    UNIQUE (note_id, tag)
);
CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID;
CREATE TABLE typed (a INT, b REAL, c TEXT, d BLOB, e ANY) STRICT;
CREATE INDEX notes_title ON notes (title) WHERE body <> '';
CREATE VIEW tagged AS SELECT notes.title, tags.tag FROM notes JOIN tags ON tags.note_id = notes.id;
CREATE TRIGGER notes_touch AFTER UPDATE ON notes BEGIN
    UPDATE notes SET created = datetime('now') WHERE id = new.id;
END;
CREATE VIRTUAL TABLE search USING fts5(title, body);
"""


@pytest.fixture
def migrated(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> Iterator[sqlite3.Connection]:
    write_migration("001_schema.sql", RICH_SCHEMA)
    db = get_db(db_path)
    try:
        run_migrations(db, migrations_dir)
        yield db
    finally:
        db.close()


def differences(db: sqlite3.Connection, folder: Path) -> list[str]:
    return [str(d) for d in schema_drift(db, folder).differences]


def test_a_migrated_database_is_clean(migrated: sqlite3.Connection, migrations_dir: Path) -> None:
    """Every kind of object the migrations make, and nothing reported."""
    drift = schema_drift(migrated, migrations_dir)
    assert drift.clean, drift
    assert drift.applied == ("001_schema.sql",)
    assert drift.database == migrated.path  # type: ignore[attr-defined]


def test_formatting_does_not_count(migrated: sqlite3.Connection, migrations_dir: Path) -> None:
    """The same objects re-created with other whitespace, keyword case and quoting: clean."""
    migrated.executescript(
        """
        PRAGMA foreign_keys=OFF;
        DROP INDEX notes_title;
        create index "NOTES_TITLE"   on [Notes]("Title")   where `body` <> '';
        DROP VIEW tagged;
        create   view Tagged as select NOTES.title,tags.TAG from notes join tags
            on tags.note_id=notes.id;
        CREATE TABLE kv2 ("K" text primary key, [v] blob) without rowid;
        DROP TABLE kv;
        ALTER TABLE kv2 RENAME TO kv;
        """
    )
    assert schema_drift(migrated, migrations_dir).clean


def test_string_literals_do_count(migrated: sqlite3.Connection, migrations_dir: Path) -> None:
    """Case folding stops at quotes: a changed literal is a difference."""
    migrated.executescript(
        "DROP INDEX notes_title; CREATE INDEX notes_title ON notes (title) WHERE body <> 'X';"
    )
    assert differences(migrated, migrations_dir) == [
        "index notes_title: definition differs: expected CREATE INDEX notes_title ON notes "
        "(title) WHERE body <> '', found CREATE INDEX notes_title ON notes (title) WHERE "
        "body <> 'X'"
    ]


def test_each_column_aspect_is_named(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Type, NOT NULL, default, primary key, missing and extra columns, their order."""
    write_migration(
        "001.sql",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b INTEGER DEFAULT 0, c TEXT, d);",
    )
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.executescript(
        "CREATE TABLE t2 (id INTEGER, a TEXT, b INT DEFAULT (1), d, e REAL);"
        "DROP TABLE t; ALTER TABLE t2 RENAME TO t;"
    )
    found = schema_drift(db, migrations_dir).differences
    assert {(d.name, d.aspect): (d.expected, d.found) for d in found} == {
        ("t.c", "missing"): ("TEXT", None),
        ("t.e", "unexpected"): (None, "REAL"),
        ("t.id", "primary key"): ("primary key column 1", "not in the primary key"),
        ("t.a", "not null"): ("NOT NULL", "nullable"),
        ("t.b", "type"): ("INTEGER", "INT"),
        ("t.b", "default"): ("0", "1"),
    }
    db.close()


def test_column_order_is_a_difference(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """INSERT without a column list depends on it, so a reordered table is reported."""
    write_migration("001.sql", "CREATE TABLE t (a TEXT, b TEXT);")
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.executescript("DROP TABLE t; CREATE TABLE t (b TEXT, a TEXT);")
    assert differences(db, migrations_dir) == [
        "table t: column order differs: expected a, b, found b, a"
    ]
    db.close()


def test_keys_constraints_and_options(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Foreign keys, UNIQUE, CHECK, WITHOUT ROWID and STRICT are each named."""
    write_migration(
        "001.sql",
        """
        CREATE TABLE p (id INTEGER PRIMARY KEY);
        CREATE TABLE c (
            id INTEGER PRIMARY KEY,
            p_id INTEGER REFERENCES p(id) ON DELETE CASCADE,
            other INTEGER REFERENCES p(id),
            n INTEGER CHECK (n > 0),
            UNIQUE (p_id, n)
        );
        CREATE TABLE k (a TEXT PRIMARY KEY) WITHOUT ROWID;
        """,
    )
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.executescript(
        """
        PRAGMA foreign_keys=OFF;
        CREATE TABLE c2 (
            id INTEGER PRIMARY KEY,
            p_id INTEGER REFERENCES p(id),
            other INTEGER,
            n INTEGER CHECK (n >= 0)
        ) STRICT;
        DROP TABLE c; ALTER TABLE c2 RENAME TO c;
        DROP TABLE k; CREATE TABLE k (a TEXT PRIMARY KEY);
        """
    )
    found = {
        (d.kind, d.name, d.aspect): (d.expected, d.found)
        for d in schema_drift(db, migrations_dir).differences
    }
    assert found == {
        ("foreign key", "c(p_id)", "definition"): (
            "(p_id) REFERENCES p(id) ON DELETE CASCADE",
            "(p_id) REFERENCES p(id)",
        ),
        ("foreign key", "c(other)", "missing"): ("(other) REFERENCES p(id)", None),
        ("table", "c", "unique"): ("UNIQUE (p_id, n)", "no UNIQUE constraint"),
        ("table", "c", "options"): ("none", "STRICT"),
        ("table", "c", "check"): ("CHECK (n > 0)", "CHECK (n >= 0)"),
        ("table", "k", "options"): ("WITHOUT ROWID", "none"),
        ("column", "k.a", "not null"): ("NOT NULL", "nullable"),  # implied by WITHOUT ROWID
    }
    db.close()


def test_other_clauses_show_as_a_definition_difference(
    migrated: sqlite3.Connection, migrations_dir: Path
) -> None:
    """A lost COLLATE, which no pragma reports, still shows: the table's definition differs."""
    migrated.executescript(
        """
        PRAGMA foreign_keys=OFF;
        PRAGMA legacy_alter_table=ON;
        CREATE TABLE tags2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE,
            tag TEXT,
            UNIQUE (note_id, tag)
        );
        DROP TABLE tags; ALTER TABLE tags2 RENAME TO tags;
        """
    )
    (difference,) = schema_drift(migrated, migrations_dir).differences
    assert (difference.kind, difference.name, difference.aspect) == ("table", "tags", "definition")
    assert "COLLATE NOCASE" in (difference.expected or "")
    assert "COLLATE" not in (difference.found or "")


def test_missing_and_extra_objects(migrated: sqlite3.Connection, migrations_dir: Path) -> None:
    """Tables, indexes, triggers and views: missing ones and ones the migrations never made."""
    migrated.executescript(
        """
        DROP TRIGGER notes_touch;
        DROP VIEW tagged;
        CREATE TABLE scratch (x);
        CREATE INDEX tags_tag ON tags (tag);
        DROP TABLE typed;
        """
    )
    found = [(d.kind, d.name, d.aspect) for d in schema_drift(migrated, migrations_dir).differences]
    assert found == [
        ("table", "scratch", "unexpected"),
        ("table", "typed", "missing"),
        ("index", "tags_tag", "unexpected"),
        ("trigger", "notes_touch", "missing"),
        ("view", "tagged", "missing"),
    ]


def test_tables_of_known_tools_and_ignored_patterns(
    migrated: sqlite3.Connection, migrations_dir: Path
) -> None:
    """sqlite_% (ANALYZE, AUTOINCREMENT), _litestream_%, _migrations, and ignore= patterns."""
    migrated.execute("INSERT INTO notes (title) VALUES ('x')")
    migrated.execute("INSERT INTO tags (note_id, tag) VALUES (1, 'a')")  # sqlite_sequence row
    migrated.commit()
    migrated.executescript(
        """
        ANALYZE;
        CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);
        CREATE TABLE _litestream_lock (id INTEGER);
        CREATE INDEX _litestream_seq_i ON _litestream_seq (seq);
        CREATE TABLE audit_cache (x);
        CREATE INDEX audit_cache_x ON audit_cache (x);
        """
    )
    found = [d.name for d in schema_drift(migrated, migrations_dir).differences]
    assert found == ["audit_cache", "audit_cache_x"]
    assert schema_drift(migrated, migrations_dir, ignore=["AUDIT_*"]).clean


def test_history_order_is_the_order_applied(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A file merged late (applied after a later-numbered one) is replayed where it ran."""
    write_migration("002_t.sql", "CREATE TABLE t (a);")
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    write_migration("001_b.sql", "ALTER TABLE t ADD COLUMN b;")
    run_migrations(db, migrations_dir)
    drift = schema_drift(db, migrations_dir)
    assert drift.applied == ("002_t.sql", "001_b.sql")
    assert drift.clean, drift
    db.close()


def test_pending_files_are_not_drift(
    migrated: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Only applied files build the expected schema."""
    write_migration("002_new.sql", "CREATE TABLE later (x);")
    assert schema_drift(migrated, migrations_dir).clean


def test_missing_and_edited_files_are_problems(
    migrated: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A history the folder cannot replay is not called clean, and says why."""
    write_migration("002_x.sql", "CREATE TABLE x (a);")
    run_migrations(migrated, migrations_dir)
    (migrations_dir / "002_x.sql").unlink()
    drift = schema_drift(migrated, migrations_dir)
    assert not drift.clean
    assert drift.problems == (
        f"migration 002_x.sql is recorded as applied but its file is missing from "
        f"{migrations_dir}; the expected schema was built without it.",
    )
    assert [str(d) for d in drift.differences] == [
        "table x is not made by the migrations (found CREATE TABLE x (a))"
    ]
    write_migration("002_x.sql", "CREATE TABLE x (a, b);")
    drift = schema_drift(migrated, migrations_dir)
    assert drift.problems == (
        "migration 002_x.sql was edited after it was applied; the expected schema was built "
        "from the edited file.",
    )
    assert [d.name for d in drift.differences] == ["x.b"]


def test_a_file_that_cannot_be_replayed_is_a_problem(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A recorded file that fails on an empty database stops the build and says so."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.execute("INSERT INTO _migrations (name, checksum) VALUES ('002.sql', NULL)")
    db.commit()
    write_migration("002.sql", "INSERT INTO missing_table VALUES (1);")
    drift = schema_drift(db, migrations_dir)
    assert drift.problems == (
        "migration 002.sql failed on a scratch database (no such table: missing_table); the "
        "expected schema stops before it.",
    )
    db.close()


def test_old_runner_history_and_no_history(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A _migrations table without checksums is replayed; no table means nothing applied."""
    write_migration("001.sql", "CREATE TABLE t (a);")
    db_path.parent.mkdir()
    db = sqlite3.connect(db_path)
    db.executescript(
        "CREATE TABLE t (a);"
        "CREATE TABLE _migrations "
        "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP);"
        "INSERT INTO _migrations (name) VALUES ('001.sql');"
    )
    assert schema_drift(db, migrations_dir).clean
    db.execute("DROP TABLE _migrations")
    drift = schema_drift(db, migrations_dir)
    assert drift.applied == ()
    assert [str(d) for d in drift.differences] == [
        "table t is not made by the migrations (found CREATE TABLE t (a))"
    ]
    db.close()


def test_never_writes_and_works_read_only(
    migrated: sqlite3.Connection, db_path: Path, migrations_dir: Path
) -> None:
    """A read-only connection is enough, and the file's bytes do not change."""
    migrated.close()
    before = hashlib.sha256(db_path.read_bytes()).hexdigest()
    readonly = get_db(db_path, readonly=True)
    assert schema_drift(readonly, migrations_dir).clean
    readonly.close()
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == before


def test_tokens_fold_names_and_keep_strings() -> None:
    """The normaliser the comparison rests on."""
    assert sql_tokens('CREATE  TABLE "My Table"([A] int, `b`) -- note\n') == (
        "create",
        "table",
        "my table",
        "(",
        "a",
        "int",
        ",",
        "b",
        ")",
    )
    assert sql_tokens("SELECT 'Ab' || X'0A'") == ("select", "'Ab'", "||", "x'0a'")
    assert sql_tokens("/* unterminated") == ()


def test_compare_schemas_of_two_databases() -> None:
    """The comparison is usable on any two connections (the migration check uses it)."""
    with (
        contextlib.closing(sqlite3.connect(":memory:")) as one,
        contextlib.closing(sqlite3.connect(":memory:")) as two,
    ):
        one.execute("CREATE TABLE t (a)")
        assert compare_schemas(read_schema(one), read_schema(two)) == [
            SchemaDifference("table", "t", "missing", "CREATE TABLE t (a)", None)
        ]
        assert str(compare_schemas(read_schema(two), read_schema(one))[0]) == (
            "table t is not made by the migrations (found CREATE TABLE t (a))"
        )
