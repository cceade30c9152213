"""The old runner's recovery, kept atomic: an ADD COLUMN whose column is already there.

Products in the field have databases the published runner left half-applied
(``executescript`` commits statement by statement; a process killed in the
middle of a file leaves some columns added and the file unrecorded), and
test fixtures that create a table with the column a migration adds. The
runner skips such an ``ADD COLUMN`` inside the file's one transaction when
the column is what the file adds, refuses the file when it is not, and
skips nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    MigrationFailedError,
    MigrationRefusedError,
    get_db,
    migration_status,
    run_migrations,
)

Write = Callable[[str, "str | bytes"], Path]
ROOT = Path(__file__).resolve().parent.parent


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM pragma_table_xinfo(?)", (table,))]


def recorded(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY name")]


def skip_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "already exists as the file adds it" in r.getMessage()
    ]


# -- a database the old runner left half-applied, for real ---------------------------

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, title TEXT NOT NULL);\n"
    "INSERT INTO jobs (title) VALUES ('welder'), ('electrician'), ('plumber');\n"
)
SCORING = (
    "ALTER TABLE jobs ADD COLUMN score REAL DEFAULT 0;\n"
    "UPDATE jobs SET score = length(title);\n"
    'ALTER TABLE jobs ADD COLUMN "Ranked At" TEXT;\n'
    "CREATE INDEX IF NOT EXISTS jobs_score ON jobs (score);\n"
)

# The old runner as products run it (bench/old_runner.py, written from the published
# runner's description: executescript per file, then the row), killed from outside in
# the middle of a file: the trace callback announces the statement it is about to run
# and waits there for the SIGKILL.
OLD_RUNNER_KILLED_AT = """
import signal, sqlite3, sys
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from bench.old_runner import connect_old, run_old_migrations

db_path, folder, marker, stop_at = sys.argv[1:5]
conn = connect_old(Path(db_path))

def trace(sql):
    if sql.strip().startswith(stop_at):
        Path(marker).write_text(sql)
        signal.pause()  # the test kills us here, mid-file

conn.set_trace_callback(trace)
run_old_migrations(conn, Path(folder))
"""


def _old_runner_killed(db_path: Path, folder: Path, stop_at: str, tmp_path: Path) -> None:
    """Run the old runner on ``folder`` and SIGKILL it as it starts the ``stop_at`` statement."""
    marker = tmp_path / "reached"
    log = tmp_path / "old-runner.log"
    with log.open("wb") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                OLD_RUNNER_KILLED_AT,
                str(db_path),
                str(folder),
                str(marker),
                stop_at,
                str(ROOT),
            ],
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the old runner never reached {stop_at!r}: {log.read_text()}")
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
@pytest.mark.parametrize(
    ("stop_at", "committed_before"),
    [
        ("UPDATE jobs", ["id", "title", "score"]),
        ('ALTER TABLE jobs ADD COLUMN "Ranked At"', ["id", "title", "score"]),
    ],
    ids=["killed-in-the-backfill", "killed-before-the-second-column"],
)
def test_a_database_the_old_runner_left_half_applied_is_completed(
    tmp_path: Path,
    migrations_dir: Path,
    write_migration: Write,
    caplog: pytest.LogCaptureFixture,
    stop_at: str,
    committed_before: list[str],
) -> None:
    """Killed mid-file by SIGKILL: our runner adopts the database and completes the file."""
    write_migration("001_jobs.sql", SCHEMA)
    write_migration("002_scoring.sql", SCORING)
    db_path = tmp_path / "field.db"
    _old_runner_killed(db_path, migrations_dir, stop_at, tmp_path)

    # What the field database looks like: a column committed, the file unrecorded.
    with sqlite3.connect(db_path) as old:
        assert [r[0] for r in old.execute("SELECT name FROM _migrations")] == ["001_jobs.sql"]
        assert [r[1] for r in old.execute("PRAGMA table_info(jobs)")] == committed_before
    old.close()

    db = get_db(db_path)
    try:
        with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
            assert run_migrations(db, migrations_dir) == ["002_scoring.sql"]
        assert columns(db, "jobs") == ["id", "title", "score", "Ranked At"]
        assert db.execute("SELECT title, score FROM jobs ORDER BY id").fetchall() == [
            ("welder", 6.0),
            ("electrician", 11.0),
            ("plumber", 7.0),
        ]
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_score'").fetchone()
        assert recorded(db) == ["001_jobs.sql", "002_scoring.sql"]
        assert [s.state for s in migration_status(db, migrations_dir)] == ["applied", "applied"]
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert run_migrations(db, migrations_dir) == []
    finally:
        db.close()
    (warning,) = skip_warnings(caplog)
    for part in ("002_scoring.sql", "line 1", "table jobs", "column score", "REAL DEFAULT 0"):
        assert part in warning


# -- a table a test fixture made ------------------------------------------------------


def test_a_fixture_table_that_already_has_the_column(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fixture's column is the migration's: the ADD COLUMN is skipped, the rest runs."""
    db.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT NOT NULL, score REAL DEFAULT 0)"
    )
    db.commit()
    write_migration("001_jobs.sql", SCHEMA)
    write_migration("002_scoring.sql", SCORING)
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
        assert run_migrations(db, migrations_dir) == ["001_jobs.sql", "002_scoring.sql"]
    assert columns(db, "jobs") == ["id", "title", "score", "Ranked At"]
    assert db.execute("SELECT sum(score) FROM jobs").fetchone() == (24.0,)
    assert len(skip_warnings(caplog)) == 1


@pytest.mark.parametrize(
    ("existing", "added"),
    [
        ("Score  real   DEFAULT (0)", "score REAL DEFAULT 0"),
        ("code varchar ( 20 ) NOT NULL DEFAULT 'x'", "CODE VARCHAR(20) NOT NULL DEFAULT 'x'"),
        ("note TEXT DEFAULT NULL", "note TEXT"),
        ("stamp TEXT DEFAULT CURRENT_TIMESTAMP", "stamp TEXT DEFAULT current_timestamp"),
        ("delta INTEGER DEFAULT -1", "delta INTEGER DEFAULT (-1)"),
        ("blob_col", "blob_col"),
    ],
)
def test_definitions_that_differ_only_in_spelling_are_the_same(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    existing: str,
    added: str,
) -> None:
    """Case, spacing, redundant parentheses and DEFAULT NULL do not make a column differ."""
    db.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {existing})")
    db.commit()
    write_migration("001_add.sql", f"ALTER TABLE t ADD COLUMN {added};")
    assert run_migrations(db, migrations_dir) == ["001_add.sql"]
    assert len(columns(db, "t")) == 2


@pytest.mark.parametrize(
    ("existing", "added", "shown"),
    [
        ("score TEXT", "score REAL DEFAULT 0", ("`TEXT`", "`REAL DEFAULT 0`")),
        ("score REAL", "score REAL NOT NULL DEFAULT 0", ("`REAL`", "`REAL NOT NULL DEFAULT 0`")),
        ("score REAL DEFAULT 1", "score REAL DEFAULT 0", ("`REAL DEFAULT 1`", "`REAL DEFAULT 0`")),
        ("score VARCHAR(10)", "score VARCHAR(20)", ("`VARCHAR(10)`", "`VARCHAR(20)`")),
        ("score INT", "score INTEGER", ("`INT`", "`INTEGER`")),
    ],
    ids=["type", "not-null", "default", "type-size", "int-is-not-integer"],
)
def test_a_column_that_differs_refuses_the_file(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    existing: str,
    added: str,
    shown: tuple[str, str],
) -> None:
    """Type, NOT NULL or DEFAULT not what the file adds: refused naming both; nothing applied."""
    db.execute(f"CREATE TABLE jobs (id INTEGER PRIMARY KEY, {existing})")
    db.commit()
    write_migration(
        "001_scoring.sql",
        f"CREATE TABLE ranking (id INTEGER);\nINSERT INTO jobs (id) VALUES (1);\n\n"
        f"ALTER TABLE jobs ADD COLUMN {added};\n",
    )
    with pytest.raises(MigrationRefusedError) as caught:
        run_migrations(db, migrations_dir)
    error = caught.value
    assert (error.name, error.line) == ("001_scoring.sql", 4)
    message = str(error)
    for part in ("001_scoring.sql", "line 4", "table jobs", "column score", *shown, "fixture"):
        assert part in message
    assert "ranking" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    assert recorded(db) == []


# -- nothing else is skipped -----------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "sqlite_says"),
    [
        ("CREATE TABLE jobs (id INTEGER PRIMARY KEY);", "table jobs already exists"),
        ("CREATE INDEX jobs_title ON jobs (title);", "index jobs_title already exists"),
        ("ALTER TABLE nowhere ADD COLUMN score REAL;", "no such table: nowhere"),
        ("ALTER TABLE nope.jobs ADD COLUMN score REAL;", "no such table: nope.jobs"),
        ("INSERT INTO jobs (id, title) VALUES (1, 'again');", "UNIQUE constraint failed"),
        ("ALTER TABLE jobs_view ADD COLUMN score REAL;", "Cannot add a column to a view"),
        ("ALTER TABLE docs ADD COLUMN body;", "virtual tables may not be altered"),
    ],
)
def test_every_other_error_still_fails_the_whole_file(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    statement: str,
    sqlite_says: str,
) -> None:
    """Only an ADD COLUMN of an existing column is skipped; nothing of a failing file stays."""
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT, score REAL)")
    db.execute("CREATE INDEX jobs_title ON jobs (title)")
    db.execute("CREATE VIEW jobs_view AS SELECT id, score FROM jobs")
    db.execute("CREATE VIRTUAL TABLE docs USING fts5 (body)")
    db.execute("INSERT INTO jobs VALUES (1, 'welder', NULL)")
    db.commit()
    write_migration(
        "001_again.sql",
        f"ALTER TABLE jobs ADD COLUMN score REAL;\nCREATE TABLE extra (x);\n{statement}\n",
    )
    with pytest.raises(MigrationFailedError, match="line 3") as caught:
        run_migrations(db, migrations_dir)
    assert sqlite_says in caught.value.sqlite_message
    assert "extra" not in {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert recorded(db) == []


def test_the_column_is_looked_up_in_the_very_table_named(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Quoted names, schema.table and case: the right table; another table's column counts not."""
    db.execute('CREATE TABLE "Job List" (id INTEGER PRIMARY KEY, "Due Date" TEXT)')
    db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, score REAL)")
    db.commit()
    write_migration(
        "001_add.sql",
        'ALTER TABLE main."Job List" ADD COLUMN [due date] TEXT;\n'
        "ALTER TABLE `JOB LIST` ADD score REAL;\n",  # COLUMN is optional
    )
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"):
        assert run_migrations(db, migrations_dir) == ["001_add.sql"]
    assert columns(db, "Job List") == ["id", "Due Date", "score"]
    (warning,) = skip_warnings(caplog)
    for part in ("line 1", "main.Job List", "due date"):
        assert part in warning


def test_a_no_transaction_file_run_again_skips_the_columns_it_added(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """A no-transaction file that failed half-way adds its columns on the retry, once each."""
    db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    db.commit()
    write_migration(
        "001_nt.sql",
        "-- cf-db: no-transaction\nALTER TABLE jobs ADD COLUMN a TEXT;\n"
        "INSERT INTO missing VALUES (1);\nALTER TABLE jobs ADD COLUMN b TEXT;\n",
    )
    with pytest.raises(MigrationFailedError, match="outside a transaction"):
        run_migrations(db, migrations_dir)
    assert columns(db, "jobs") == ["id", "a"]
    write_migration(
        "001_nt.sql",
        "-- cf-db: no-transaction\nALTER TABLE jobs ADD COLUMN a TEXT;\n"
        "ALTER TABLE jobs ADD COLUMN b TEXT;\n",
    )
    assert run_migrations(db, migrations_dir) == ["001_nt.sql"]
    assert columns(db, "jobs") == ["id", "a", "b"]
