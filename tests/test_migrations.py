"""run_migrations and migration_status: atomic files, the rules, adoption, checksums, status."""

from __future__ import annotations

import ast
import fcntl
import logging
import os
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    ForeignKeyViolationError,
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationRefusedError,
    MigrationSourceError,
    get_db,
    migration_status,
    run_migrations,
)
from circuitforge_core.db.migrations import shortcut as migrations_module

Write = Callable[[str, "str | bytes"], Path]


def tables(db: sqlite3.Connection) -> set[str]:
    return {
        row[0]
        for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
    }


def recorded(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]


def traced(db: sqlite3.Connection, action: Callable[[], object]) -> list[str]:
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    try:
        action()
    finally:
        db.set_trace_callback(None)
    return seen


# -- applying -----------------------------------------------------------------------


def test_applies_in_filename_order_once(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Pending files run in filename order, their names come back, and only once."""
    write_migration("002_b.sql", "INSERT INTO log VALUES ('b');")
    write_migration("001_a.sql", "CREATE TABLE log (step TEXT); INSERT INTO log VALUES ('a');")
    write_migration("010_c.sql", "INSERT INTO log VALUES ('c');")
    assert run_migrations(db, migrations_dir) == ["001_a.sql", "002_b.sql", "010_c.sql"]
    assert run_migrations(db, migrations_dir) == []
    assert [r[0] for r in db.execute("SELECT step FROM log")] == ["a", "b", "c"]
    assert recorded(db) == ["001_a.sql", "002_b.sql", "010_c.sql"]


def test_other_files_are_ignored(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Only *.sql files count; notes, backups and subfolders are left alone."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("README.md", "not sql")
    write_migration("002_b.sql.bak", "garbage")
    (migrations_dir / "003_folder.sql").mkdir()
    assert run_migrations(db, migrations_dir) == ["001_a.sql"]


def test_records_layout_and_checksum(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """_migrations keeps the products' layout plus checksum and duration columns."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    run_migrations(db, migrations_dir)
    columns = [(row[1], row[2]) for row in db.execute("PRAGMA table_info(_migrations)")]
    assert columns[:2] == [("name", "TEXT"), ("applied_at", "TEXT")]
    assert {"checksum", "duration_ms"} <= {name for name, _ in columns}
    name, applied_at, checksum, duration = db.execute(
        "SELECT name, applied_at, checksum, duration_ms FROM _migrations"
    ).fetchone()
    assert name == "001_a.sql"
    assert applied_at
    assert len(checksum) == 64
    assert duration >= 0


def test_failing_statement_leaves_nothing_of_the_file(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A failure on the third statement undoes the first two; later files do not run."""
    write_migration("001_ok.sql", "CREATE TABLE kept (x);")
    write_migration(
        "002_bad.sql",
        "CREATE TABLE one (x);\nINSERT INTO kept VALUES (1);\n\n"
        "-- the typo\nINSERT INTO nowhere VALUES (1);\n",
    )
    write_migration("003_later.sql", "CREATE TABLE later (x);")
    with pytest.raises(MigrationFailedError) as info:
        run_migrations(db, migrations_dir)
    error = info.value
    assert error.name == "002_bad.sql"
    assert error.line == 5
    assert error.statement == "INSERT INTO nowhere VALUES (1);"
    assert "no such table: nowhere" in error.sqlite_message
    for part in ("002_bad.sql", "line 5", "INSERT INTO nowhere", "no such table"):
        assert part in str(error)
    assert tables(db) == {"_migrations", "kept"}
    assert db.execute("SELECT count(*) FROM kept").fetchone()[0] == 0
    assert recorded(db) == ["001_ok.sql"]
    assert not db.in_transaction
    # Fixing the file lets the next call finish the job.
    write_migration("002_bad.sql", "CREATE TABLE one (x);")
    assert run_migrations(db, migrations_dir) == ["002_bad.sql", "003_later.sql"]


def test_statements_split_as_sqlite_reads_them(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Triggers with CASE...END, ; in strings, identifiers and comments all survive splitting."""
    write_migration(
        "001_tricky.sql",
        """
        CREATE TABLE "we;ird" ("a;b" TEXT, [c;d] TEXT, `e;f` TEXT); -- a comment; with ;
        /* block; comment */
        CREATE TABLE audit (msg TEXT);
        CREATE TRIGGER log_it AFTER INSERT ON "we;ird" BEGIN
            INSERT INTO audit VALUES (CASE WHEN new."a;b" = 'x;y' THEN 'match;' ELSE 'no;' END);
            INSERT INTO audit VALUES ('second; statement');
        END;
        INSERT INTO "we;ird" VALUES ('x;y', 'it''s; fine', '-- not a comment');
        """,
    )
    run_migrations(db, migrations_dir)
    assert db.execute('SELECT "a;b", [c;d], `e;f` FROM "we;ird"').fetchone() == (
        "x;y",
        "it's; fine",
        "-- not a comment",
    )
    assert [r[0] for r in db.execute("SELECT msg FROM audit")] == ["match;", "second; statement"]


def test_crlf_bom_empty_and_comment_only_files(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """CRLF endings and a BOM are read fine; empty and comment-only files are recorded."""
    write_migration(
        "001_crlf.sql", b"\xef\xbb\xbfCREATE TABLE a (x);\r\nINSERT INTO a VALUES (1);\r\n"
    )
    write_migration("002_empty.sql", b"")
    write_migration("003_comments.sql", "-- nothing yet\n/* still nothing; */\n")
    write_migration("004_semicolons.sql", ";;\n;")
    assert run_migrations(db, migrations_dir) == [
        "001_crlf.sql",
        "002_empty.sql",
        "003_comments.sql",
        "004_semicolons.sql",
    ]
    assert db.execute("SELECT x FROM a").fetchall() == [(1,)]


def test_syntax_error_reports_line(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A statement SQLite cannot parse fails with its line and SQLite's words."""
    write_migration("001_typo.sql", "CREATE TABLE a (x);\n\nCREAT TABLE b (y);\n")
    with pytest.raises(MigrationFailedError, match=r"line 3: near \"CREAT\": syntax error"):
        run_migrations(db, migrations_dir)
    assert "a" not in tables(db)


def test_callbacks_and_log_report_each_file(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_start/on_applied see each file, and each applied file is logged with its duration."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    events: list[tuple[str, str]] = []
    with caplog.at_level(logging.INFO, logger="circuitforge_core.db"):
        run_migrations(
            db,
            migrations_dir,
            on_start=lambda name: events.append(("start", name)),
            on_applied=lambda name, seconds: events.append(("done", name)),
        )
    assert events == [
        ("start", "001_a.sql"),
        ("done", "001_a.sql"),
        ("start", "002_b.sql"),
        ("done", "002_b.sql"),
    ]
    logged = [r.getMessage() for r in caplog.records if "applied migration" in r.getMessage()]
    assert len(logged) == 2
    assert all(" ms" in message for message in logged)


def test_open_transaction_is_refused(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Migrating a connection that is inside a transaction is a clear MigrationError."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(MigrationError, match="no open transaction"):
        run_migrations(db, migrations_dir)
    db.rollback()


def test_plain_sqlite3_connection_is_served(tmp_path: Path, write_migration: Write) -> None:
    """A connection from sqlite3.connect (the old factory) migrates the same way."""
    write_migration("001_a.sql", "CREATE TABLE a (x); INSERT INTO a VALUES (1);")
    plain = sqlite3.connect(tmp_path / "plain.db")
    try:
        assert run_migrations(plain, tmp_path / "migrations") == ["001_a.sql"]
        assert run_migrations(plain, tmp_path / "migrations") == []
        assert plain.execute("SELECT x FROM a").fetchall() == [(1,)]
    finally:
        plain.close()


# -- foreign keys and table rebuilds -----------------------------------------------

PARENT_AND_CHILDREN = """
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE
);
INSERT INTO parent VALUES (1, 'a'), (2, 'b');
INSERT INTO child VALUES (10, 1), (11, 1), (12, 2);
"""

REBUILD_PARENT = """
CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');
INSERT INTO parent_new (id, name) SELECT id, coalesce(name, '') FROM parent;
DROP TABLE parent;
ALTER TABLE parent_new RENAME TO parent;
"""


@pytest.mark.parametrize(
    "wrapper",
    [
        ("", ""),
        ("PRAGMA foreign_keys=OFF;\n", "PRAGMA foreign_key_check;\nPRAGMA foreign_keys=ON;\n"),
        (
            "PRAGMA foreign_keys = OFF;\nBEGIN TRANSACTION;\n",
            "PRAGMA foreign_key_check;\nCOMMIT;\nPRAGMA foreign_keys = ON;\n",
        ),
    ],
    ids=["bare", "with-pragmas", "sqlite-docs-12-step"],
)
def test_table_rebuild_keeps_cascading_children(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    wrapper: tuple[str, str],
) -> None:
    """Rebuilding a parent table never cascades deletes into its children."""
    write_migration("001_init.sql", PARENT_AND_CHILDREN)
    write_migration("002_rebuild.sql", wrapper[0] + REBUILD_PARENT + wrapper[1])
    run_migrations(db, migrations_dir)
    assert db.execute("SELECT count(*) FROM child").fetchone()[0] == 3
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def test_dangling_references_fail_the_migration(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Dropping a parent that still has children is refused: nothing applied, FKs back on."""
    write_migration("001_init.sql", PARENT_AND_CHILDREN)
    write_migration("002_drop_parent.sql", "DROP TABLE parent;")
    with pytest.raises(ForeignKeyViolationError) as info:
        run_migrations(db, migrations_dir)
    assert info.value.name == "002_drop_parent.sql"
    assert {v[0] for v in info.value.violations} == {"child"}
    assert "child" in str(info.value)
    assert "parent" in tables(db)
    assert db.execute("SELECT count(*) FROM child").fetchone()[0] == 3
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert recorded(db) == ["001_init.sql"]


def test_foreign_keys_restored_after_a_failing_rebuild(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Enforcement comes back on even when a rebuild migration fails with an SQL error."""
    write_migration("001_init.sql", PARENT_AND_CHILDREN)
    write_migration("002_bad.sql", "DROP TABLE parent;\nSELECT * FROM missing_table;")
    with pytest.raises(MigrationFailedError):
        run_migrations(db, migrations_dir)
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert "parent" in tables(db)


def test_foreign_keys_left_off_stay_off(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A connection that had enforcement off gets it back off, and is still checked."""
    db.execute("PRAGMA foreign_keys=OFF")
    write_migration("001_init.sql", PARENT_AND_CHILDREN)
    write_migration("002_rebuild.sql", REBUILD_PARENT)
    run_migrations(db, migrations_dir)
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 0


def test_ordinary_migration_checks_no_foreign_keys(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A file that cannot break a reference neither toggles enforcement nor scans tables."""
    write_migration("001_init.sql", PARENT_AND_CHILDREN)
    run_migrations(db, migrations_dir)
    write_migration("002_index.sql", "CREATE INDEX IF NOT EXISTS child_parent ON child(parent_id);")
    write_migration("003_column.sql", "ALTER TABLE parent ADD COLUMN note TEXT;")
    statements = traced(db, lambda: run_migrations(db, migrations_dir))
    assert not [s for s in statements if "foreign_key" in s.lower()]


def test_rebuild_checks_only_what_it_touched(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Rebuilding an unrelated table checks that table, not the big child table."""
    write_migration("001_init.sql", PARENT_AND_CHILDREN + "CREATE TABLE other (v TEXT);")
    run_migrations(db, migrations_dir)
    write_migration(
        "002_rebuild_other.sql",
        "CREATE TABLE other_new (v TEXT NOT NULL DEFAULT '');\n"
        "INSERT INTO other_new SELECT coalesce(v, '') FROM other;\n"
        "DROP TABLE other;\nALTER TABLE other_new RENAME TO other;\n",
    )
    statements = traced(db, lambda: run_migrations(db, migrations_dir))
    checks = [s for s in statements if "foreign_key_check" in s]
    assert checks == ['PRAGMA foreign_key_check("other")']


def test_trigger_writes_are_checked_too(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Rows a trigger writes while enforcement is off are checked as well."""
    write_migration(
        "001_init.sql",
        PARENT_AND_CHILDREN
        + "CREATE TABLE scratch (id INTEGER);\n"
        + "CREATE TRIGGER spill AFTER INSERT ON scratch BEGIN\n"
        + "  INSERT INTO child (id, parent_id) VALUES (new.id, 999);\nEND;\n",
    )
    run_migrations(db, migrations_dir)
    write_migration(
        "002_sneaky.sql", "DROP TABLE IF EXISTS nothing_here;\nINSERT INTO scratch VALUES (77);\n"
    )
    with pytest.raises(ForeignKeyViolationError, match="child"):
        run_migrations(db, migrations_dir)
    assert db.execute("SELECT count(*) FROM child WHERE id = 77").fetchone()[0] == 0


# -- rules: no-transaction files, transaction control ------------------------------


def test_no_transaction_file_runs_vacuum(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A file marked -- cf-db: no-transaction may VACUUM and is recorded."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("002_vacuum.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    assert run_migrations(db, migrations_dir) == ["001_a.sql", "002_vacuum.sql"]
    assert db.isolation_level == "IMMEDIATE"


def test_no_transaction_file_restores_foreign_keys(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A no-transaction file that switches foreign keys off gets them switched back."""
    write_migration("001_off.sql", "-- cf-db: no-transaction\nPRAGMA foreign_keys=OFF;\n")
    run_migrations(db, migrations_dir)
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_no_transaction_lock_file_is_private(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, db_path: Path
) -> None:
    """The lock file beside the database is 0600 whatever the umask."""
    write_migration("001_v.sql", "-- cf-db: no-transaction\nVACUUM;\n")
    old_umask = os.umask(0)
    try:
        run_migrations(db, migrations_dir)
    finally:
        os.umask(old_umask)
    assert (Path(str(db_path) + ".migrate-lock").stat().st_mode & 0o777) == 0o600


def test_a_no_transaction_file_waits_for_the_lock_file_then_gives_up_naming_it(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, db_path: Path
) -> None:
    """Another holder of <db>.migrate-lock past lock_timeout: MigrationError, nothing applied."""
    write_migration("001_v.sql", "-- cf-db: no-transaction\nCREATE TABLE t (x);\n")
    with open(str(db_path) + ".migrate-lock", "a+b") as held:  # another open file: flock conflicts
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(MigrationError, match=r"gave up waiting for .*app\.db\.migrate-lock"):
            run_migrations(db, migrations_dir, lock_timeout=0.05)
    assert "t" not in tables(db)
    assert run_migrations(db, migrations_dir) == ["001_v.sql"]  # free again: it runs


def test_shortcut_memory_stays_bounded(
    tmp_path: Path, write_migration: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrating more databases than the limit forgets the oldest, not growing forever."""
    monkeypatch.setattr(migrations_module, "_up_to_date", {})
    monkeypatch.setattr(migrations_module, "_UP_TO_DATE_KEPT", 5)
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    for number in range(12):
        db = get_db(tmp_path / f"user{number}.db")
        try:
            assert run_migrations(db, tmp_path / "migrations") == ["001_a.sql"]
            assert run_migrations(db, tmp_path / "migrations") == []
        finally:
            db.close()
    assert len(migrations_module._up_to_date) == 5


def test_no_transaction_failure_is_not_recorded(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A failing no-transaction file is not recorded and says its earlier statements stayed."""
    write_migration(
        "001_nt.sql",
        "-- cf-db: no-transaction\nCREATE TABLE a (x);\nINSERT INTO nope VALUES (1);\n",
    )
    with pytest.raises(MigrationFailedError, match="outside a transaction"):
        run_migrations(db, migrations_dir)
    assert recorded(db) == []


@pytest.mark.parametrize(
    "statement",
    [
        "VACUUM;",
        "VACUUM INTO '/tmp/x.db';",
        "PRAGMA journal_mode=DELETE;",
        "PRAGMA main.journal_mode = DELETE;",
        "PRAGMA synchronous=FULL;",
        "PRAGMA page_size=8192;",
        "PRAGMA auto_vacuum=FULL;",
        "PRAGMA wal_checkpoint(TRUNCATE);",
    ],
)
def test_statements_that_need_no_transaction_are_refused_up_front(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, statement: str
) -> None:
    """Without the marker, such a statement is refused before any pending file runs."""
    write_migration("001_fine.sql", "CREATE TABLE a (x);")
    write_migration("002_needs_marker.sql", f"CREATE TABLE b (x);\n{statement}\n")
    with pytest.raises(MigrationRefusedError) as info:
        run_migrations(db, migrations_dir)
    assert info.value.name == "002_needs_marker.sql"
    assert info.value.line == 2
    assert "-- cf-db: no-transaction" in str(info.value)
    assert "a" not in tables(db)


def test_wrapping_begin_commit_is_accepted(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A file wrapped in BEGIN ... COMMIT (old executescript style) still runs atomically."""
    write_migration(
        "001_wrapped.sql",
        "BEGIN TRANSACTION;\nCREATE TABLE a (x);\nINSERT INTO nope VALUES (1);\nCOMMIT;\n",
    )
    with pytest.raises(MigrationFailedError):
        run_migrations(db, migrations_dir)
    assert "a" not in tables(db)
    write_migration("001_wrapped.sql", "BEGIN;\nCREATE TABLE a (x);\nEND TRANSACTION;\n")
    assert run_migrations(db, migrations_dir) == ["001_wrapped.sql"]


@pytest.mark.parametrize(
    "body",
    [
        "CREATE TABLE a (x);\nCOMMIT;\nCREATE TABLE b (x);",
        "CREATE TABLE a (x);\nROLLBACK;",
        "CREATE TABLE a (x);\nBEGIN;\nCREATE TABLE b (x);",
    ],
)
def test_stray_transaction_control_is_refused(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, body: str
) -> None:
    """COMMIT, ROLLBACK or BEGIN in the middle of a file is refused; nothing runs."""
    write_migration("001_stray.sql", body)
    with pytest.raises(MigrationRefusedError, match="line 2"):
        run_migrations(db, migrations_dir)
    assert "a" not in tables(db)


def test_savepoints_inside_a_file_are_fine(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """SAVEPOINT, ROLLBACK TO and RELEASE nest inside the runner's transaction."""
    write_migration(
        "001_sp.sql",
        "CREATE TABLE a (x);\nSAVEPOINT s;\nINSERT INTO a VALUES (1);\n"
        "ROLLBACK TO s;\nRELEASE s;\nINSERT INTO a VALUES (2);\n",
    )
    run_migrations(db, migrations_dir)
    assert db.execute("SELECT x FROM a").fetchall() == [(2,)]


# -- history: adoption, checksums, missing, out of order --------------------------


def test_adopts_a_database_migrated_by_the_old_runner(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """Old _migrations rows are kept as they are; only new files are applied."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.execute(
        "CREATE TABLE _migrations "
        "(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP)"
    )
    old.executescript((migrations_dir / "001_a.sql").read_text())
    old.execute(
        "INSERT INTO _migrations (name, applied_at) VALUES ('001_a.sql', '2025-01-02 03:04:05')"
    )
    old.commit()
    old.close()
    write_migration("003_c.sql", "CREATE TABLE c (x);")
    db = get_db(db_path)
    try:
        assert run_migrations(db, migrations_dir) == ["002_b.sql", "003_c.sql"]
        rows = db.execute(
            "SELECT name, applied_at, checksum FROM _migrations ORDER BY name"
        ).fetchall()
        assert rows[0][:2] == ("001_a.sql", "2025-01-02 03:04:05")
        assert all(len(row[2]) == 64 for row in rows)
    finally:
        db.close()


def test_edited_applied_file_is_refused_before_anything_runs(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """An applied file whose text changed raises MigrationModifiedError; pending ones wait."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    run_migrations(db, migrations_dir)
    write_migration("001_a.sql", "CREATE TABLE a (x, y);")
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    with pytest.raises(MigrationModifiedError, match=r"001_a\.sql") as info:
        run_migrations(db, migrations_dir)
    assert info.value.name == "001_a.sql"
    assert "b" not in tables(db)


def test_line_endings_and_bom_are_not_edits(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Converting a file to CRLF or adding a BOM does not count as editing it."""
    write_migration("001_a.sql", "CREATE TABLE a (x);\nCREATE TABLE b (y);\n")
    run_migrations(db, migrations_dir)
    write_migration("001_a.sql", b"\xef\xbb\xbfCREATE TABLE a (x);\r\nCREATE TABLE b (y);\r\n")
    write_migration("002_c.sql", "CREATE TABLE c (x);")
    assert run_migrations(db, migrations_dir) == ["002_c.sql"]


def test_missing_applied_file_is_a_warning(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recorded migration whose file is gone is logged, not fatal."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    run_migrations(db, migrations_dir)
    (migrations_dir / "001_a.sql").unlink()
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
        assert run_migrations(db, migrations_dir) == ["002_b.sql"]
    assert any("001_a.sql" in r.getMessage() and "gone" in r.getMessage() for r in caplog.records)


def test_out_of_order_file_is_applied_with_a_warning(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pending file sorting before an applied one (merged branches) runs, with a warning."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("003_c.sql", "CREATE TABLE c (x);")
    run_migrations(db, migrations_dir)
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
        assert run_migrations(db, migrations_dir) == ["002_b.sql"]
    assert any("002_b.sql" in r.getMessage() for r in caplog.records)


def test_two_files_with_the_same_number(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Two files sharing a number are both applied, in name order."""
    write_migration("005_users.sql", "CREATE TABLE users (x);")
    write_migration("005_posts.sql", "CREATE TABLE posts (x);")
    assert run_migrations(db, migrations_dir) == ["005_posts.sql", "005_users.sql"]


# -- cost of a call with nothing pending -----------------------------------------------


def test_nothing_pending_writes_nothing(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, db_path: Path
) -> None:
    """With nothing pending (and the shortcut cleared), the runner only reads."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    run_migrations(db, migrations_dir)
    migrations_module._up_to_date.clear()
    wal = Path(str(db_path) + "-wal")
    before = (db_path.stat().st_mtime_ns, wal.stat().st_size, db.total_changes)
    statements = traced(db, lambda: run_migrations(db, migrations_dir))
    assert statements
    writes = ("INSERT", "UPDATE", "DELETE", "BEGIN", "CREATE", "ALTER", "COMMIT")
    assert not [s for s in statements if s.lstrip().upper().startswith(writes)]
    assert (db_path.stat().st_mtime_ns, wal.stat().st_size, db.total_changes) == before


def test_repeated_call_runs_no_sql(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """After the first call, an unchanged database and folder cost one PRAGMA, on any connection."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    first = get_db(db_path)
    run_migrations(first, migrations_dir)
    first.close()
    again = get_db(db_path)
    try:
        assert traced(again, lambda: run_migrations(again, migrations_dir)) == [
            "PRAGMA schema_version"
        ]
    finally:
        again.close()


def test_shortcut_notices_a_new_file(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Adding a file to the folder is seen by the next call."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    run_migrations(db, migrations_dir)
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    assert run_migrations(db, migrations_dir) == ["002_b.sql"]


def test_in_place_edit_is_caught_before_anything_new_runs(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """An applied file edited in place is refused as soon as a new file is to be applied."""
    path = write_migration("001_a.sql", "CREATE TABLE a (x);")
    run_migrations(db, migrations_dir)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\nCREATE TABLE sneaky (x);\n")
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    with pytest.raises(MigrationModifiedError):
        run_migrations(db, migrations_dir)
    assert "b" not in tables(db)
    assert [s.state for s in migration_status(db, migrations_dir)] == ["modified", "pending"]


def test_in_place_edit_is_caught_by_a_new_process(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """With nothing to apply, an in-place edit is refused by the next process's first call."""
    path = write_migration("001_a.sql", "CREATE TABLE a (x);")
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.close()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\nCREATE TABLE sneaky (x);\n")
    script = (
        "import sys\n"
        "from circuitforge_core.db import get_db, run_migrations, MigrationModifiedError\n"
        "db = get_db(sys.argv[1])\n"
        "try:\n"
        "    run_migrations(db, sys.argv[2])\n"
        "except MigrationModifiedError as exc:\n"
        "    print(exc.name)\n"
        "finally:\n"
        "    db.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(db_path), str(migrations_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "001_a.sql"


def test_shortcut_notices_a_replaced_database(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """A database deleted and created again at the same path is migrated again."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    db = get_db(db_path)
    try:
        assert run_migrations(db, migrations_dir) == ["001_a.sql"]
    finally:
        db.close()


# -- sources ---------------------------------------------------------------------------


def test_package_resources_are_a_source(db: sqlite3.Connection, tmp_path: Path) -> None:
    """Migrations shipped inside a package load through importlib.resources."""
    package = tmp_path / "pkgroot" / "myproduct"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "migrations" / "001_a.sql").write_text("CREATE TABLE a (x);")
    sys.path.insert(0, str(tmp_path / "pkgroot"))
    try:
        from importlib.resources import files

        assert run_migrations(db, files("myproduct") / "migrations") == ["001_a.sql"]
        assert run_migrations(db, files("myproduct") / "migrations") == []
    finally:
        sys.path.remove(str(tmp_path / "pkgroot"))
        sys.modules.pop("myproduct", None)


def test_zipped_resources_are_a_source(db: sqlite3.Connection, tmp_path: Path) -> None:
    """A traversable that is not a plain folder (a zip) works as well."""
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("migrations/001_a.sql", "CREATE TABLE a (x);")
        bundle.writestr("migrations/002_b.sql", "CREATE TABLE b (x);")
    with zipfile.ZipFile(archive) as bundle:
        source = zipfile.Path(bundle, "migrations/")
        assert run_migrations(db, source) == ["001_a.sql", "002_b.sql"]
        assert run_migrations(db, source) == []


def test_missing_folder_is_a_clear_error(db: sqlite3.Connection, tmp_path: Path) -> None:
    """A folder that does not exist raises MigrationSourceError naming it."""
    with pytest.raises(MigrationSourceError, match="does not exist") as info:
        run_migrations(db, tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_invalid_utf8_names_file_and_line(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A file with bytes that are not UTF-8 is refused naming the file and line."""
    write_migration("001_latin1.sql", b"CREATE TABLE a (x);\n-- caf\xe9\n")
    with pytest.raises(MigrationSourceError, match=r"001_latin1.sql.*line 2") as info:
        run_migrations(db, migrations_dir)
    assert info.value.name == "001_latin1.sql"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_a_clear_error(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A migration file that cannot be read is named in the error."""
    path = write_migration("001_a.sql", "CREATE TABLE a (x);")
    path.chmod(0)
    with pytest.raises(MigrationSourceError, match=r"001_a\.sql"):
        run_migrations(db, migrations_dir)


# -- status ----------------------------------------------------------------------------


def test_status_reports_every_state(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """applied, pending, modified and missing, in file order then missing names."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    write_migration("002_b.sql", "CREATE TABLE b (x);")
    write_migration("003_c.sql", "CREATE TABLE c (x);")
    run_migrations(db, migrations_dir)
    write_migration("002_b.sql", "CREATE TABLE b (x, changed);")
    (migrations_dir / "003_c.sql").unlink()
    write_migration("004_d.sql", "CREATE TABLE d (x);")
    statuses = migration_status(db, migrations_dir)
    assert [(s.name, s.state) for s in statuses] == [
        ("001_a.sql", "applied"),
        ("002_b.sql", "modified"),
        ("004_d.sql", "pending"),
        ("003_c.sql", "missing"),
    ]
    assert statuses[0].applied_at is not None
    assert statuses[2].applied_at is None


def test_status_never_writes(db_path: Path, migrations_dir: Path, write_migration: Write) -> None:
    """Status works on a read-only connection and on a database never migrated."""
    write_migration("001_a.sql", "CREATE TABLE a (x);")
    get_db(db_path).close()
    ro = get_db(db_path, readonly=True)
    try:
        assert [s.state for s in migration_status(ro, migrations_dir)] == ["pending"]
    finally:
        ro.close()
    db = get_db(db_path)
    run_migrations(db, migrations_dir)
    db.close()
    ro = get_db(db_path, readonly=True)
    try:
        assert [s.state for s in migration_status(ro, migrations_dir)] == ["applied"]
    finally:
        ro.close()


# -- the room's walls ------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "circuitforge_core" / "db"


def test_nothing_outside_the_package_imports_its_private_names() -> None:
    """Modules outside migrations/ import only public names from it, whatever the module."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.relative_to(PACKAGE).parts[:-1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("migrations"):
                offenders += [
                    f"{path.name}: {alias.name}" for alias in node.names if alias.name[0] == "_"
                ]
    assert offenders == []
