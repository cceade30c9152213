"""Every error out of run_migrations is a DBError naming the database and the file.

A full disk (a real, tiny file system), a read-only connection, a closed
one, and a file that drops or alters ``_migrations`` (refused before
anything commits).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    MigrationError,
    MigrationRefusedError,
    get_db,
    lint_report,
    plan_migrations,
    run_migrations,
)

Write = Callable[[str, "str | bytes"], Path]


def tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


# -- a full disk ---------------------------------------------------------------------

# Runs inside a private mount namespace on a 512 KiB tmpfs at argv[1]: fills it, then
# migrates, and prints what each step raised as JSON.
FULL_DISK_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from circuitforge_core.db import get_db, run_migrations

mount, folder = Path(sys.argv[1]), Path(sys.argv[2])
db_path = mount / "app.db"
filler = mount / "filler"

def fill():
    with open(filler, "ab", buffering=0) as handle:
        for block in (65536, 4096, 1):  # to the last byte
            try:
                while True:
                    handle.write(b"\0" * block)
            except OSError:
                pass

def attempt(db, folder):
    try:
        return {"applied": run_migrations(db, folder)}
    except BaseException as exc:
        return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc), "name": getattr(exc, "name", None),
                "code": getattr(exc.__cause__, "sqlite_errorcode", None)}

db = get_db(db_path)  # created while there is room: WAL set, nothing else
report = {}
fill()  # no room for the -shm file its first read needs
report["first run"] = attempt(db, folder / "first")
filler.unlink()
db.execute("SELECT count(*) FROM sqlite_master").fetchall()  # -shm and -wal in place
fill()  # no room for the first write, adopting _migrations
report["adopting"] = attempt(db, folder / "first")
filler.unlink()
report["with room"] = attempt(db, folder / "first")
fill()
report["a file too big"] = attempt(db, folder / "second")
report["tables"] = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master"))
report["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
db.close()
print(json.dumps(report))
"""


def _on_a_tiny_file_system(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run FULL_DISK_SCRIPT in a user and mount namespace of its own, on a 512 KiB tmpfs."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) to mount a small file system")
    mount = tmp_path / "tiny"
    mount.mkdir()
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=512k tmpfs '{mount}'"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    return subprocess.run(
        [
            unshare,
            "-rm",
            "sh",
            "-c",
            'mount -t tmpfs -o size=512k tmpfs "$1" && exec "$2" -c "$3" "$1" "$4"',
            "sh",
            str(mount),
            sys.executable,
            FULL_DISK_SCRIPT,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_a_full_disk_is_a_migration_error_naming_database_and_file(
    tmp_path: Path, migrations_dir: Path
) -> None:
    """Adopting on a full disk, and a file that outgrows it: DBErrors with what to do."""
    first = migrations_dir / "first"
    first.mkdir()
    (first / "001_notes.sql").write_text("CREATE TABLE notes (body TEXT);", encoding="utf-8")
    second = migrations_dir / "second"
    shutil.copytree(first, second)
    (second / "002_fill.sql").write_text(  # about 4 MB: far more than the disk holds
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000)\n"
        "INSERT INTO notes SELECT hex(randomblob(1000)) FROM c;\n",
        encoding="utf-8",
    )
    result = _on_a_tiny_file_system(tmp_path, str(migrations_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    database = str(tmp_path / "tiny" / "app.db")

    for step, says in (("first run", "the disk is probably full"), ("adopting", "disk is full")):
        error = report[step]
        assert error["type"] == "MigrationError", error
        assert "DBError" in error["mro"]
        for part in (database, "001_notes.sql", says, "Free space", "Nothing was applied"):
            assert part in error["message"], error

    assert report["with room"] == {"applied": ["001_notes.sql"]}

    too_big = report["a file too big"]
    assert too_big["type"] == "MigrationFailedError", too_big
    assert too_big["name"] == "002_fill.sql"
    for part in (database, "002_fill.sql", "disk is full", "Nothing of this file"):
        assert part in too_big["message"]
    # Where it stops depends on when the page cache spills: the statement, or the COMMIT.
    assert any(where in too_big["message"] for where in ("line 1", "could not commit"))
    assert "Fix the file" not in too_big["message"]  # the file is not what is wrong
    assert report["tables"] == ["_migrations", "notes", "sqlite_autoindex__migrations_1"]
    assert report["integrity"] == "ok"


# -- connections that cannot write ---------------------------------------------------


def test_a_read_only_connection_with_a_pending_file(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """readonly=True: a clear MigrationError naming database and file; fine when nothing pends."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    get_db(db_path).close()
    readonly = get_db(db_path, readonly=True)
    try:
        with pytest.raises(MigrationError) as caught:
            run_migrations(readonly, migrations_dir)
        message = str(caught.value)
        for part in (str(db_path), "001_a.sql", "read-only", "read-write connection"):
            assert part in message
        assert caught.value.name == "001_a.sql"
    finally:
        readonly.close()
    assert run_migrations(db_path, migrations_dir) == ["001_a.sql"]
    readonly = get_db(db_path, readonly=True)
    try:
        assert run_migrations(readonly, migrations_dir) == []
    finally:
        readonly.close()


def test_a_plain_read_only_connection_is_translated_too(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    """sqlite3.connect(mode=ro), which does not say it is read-only: SQLite's refusal, named."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    get_db(db_path).close()
    plain = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)
    try:
        with pytest.raises(MigrationError) as caught:
            run_migrations(plain, migrations_dir)
        message = str(caught.value)
        for part in (str(db_path), "001_a.sql", "readonly database", "read-write connection"):
            assert part in message
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    finally:
        plain.close()


def test_a_closed_connection_is_a_migration_error(
    db_path: Path, migrations_dir: Path, write_migration: Write
) -> None:
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    closed = get_db(db_path)
    closed.close()
    with pytest.raises(MigrationError, match="closed database"):
        run_migrations(closed, migrations_dir)


# -- _migrations belongs to the runner ---------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE _migrations;",
        'DROP TABLE IF EXISTS main."_Migrations";',
        "ALTER TABLE _migrations RENAME TO _migrations_old;",
        "ALTER TABLE [_migrations] RENAME COLUMN checksum TO sha;",
        "ALTER TABLE `_migrations` ADD COLUMN note TEXT;",
        "ALTER TABLE _migrations DROP COLUMN duration_ms;",
    ],
)
@pytest.mark.parametrize("no_transaction", [False, True], ids=["transaction", "no-transaction"])
def test_dropping_or_altering_migrations_is_refused_before_anything_commits(
    db: sqlite3.Connection,
    migrations_dir: Path,
    write_migration: Write,
    statement: str,
    no_transaction: bool,
) -> None:
    """Refused up front, naming file and line; reported by lint and the dry run too."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    run_migrations(db, migrations_dir)
    marker = "-- cf-db: no-transaction\n" if no_transaction else ""
    write_migration("002_b.sql", "CREATE TABLE IF NOT EXISTS b (x);")
    write_migration(
        "003_bookkeeping.sql", f"{marker}CREATE TABLE IF NOT EXISTS c (x);\n{statement}\n"
    )
    line = 3 if no_transaction else 2
    with pytest.raises(MigrationRefusedError) as caught:
        run_migrations(db, migrations_dir)
    assert (caught.value.name, caught.value.line) == ("003_bookkeeping.sql", line)
    assert "_migrations" in str(caught.value)
    assert tables(db) == {"_migrations", "a"}
    assert [row[0] for row in db.execute("SELECT name FROM _migrations")] == ["001_a.sql"]
    assert {row[1] for row in db.execute("PRAGMA table_info(_migrations)")} == {
        "name",
        "applied_at",
        "checksum",
        "duration_ms",
    }
    findings = [(f.file, f.line, f.code) for f in lint_report(migrations_dir).findings]
    assert ("003_bookkeeping.sql", line, "migrations-table") in findings
    plan = plan_migrations(db, migrations_dir)
    assert [(p.kind, p.name, p.line) for p in plan.problems] == [
        ("refused", "003_bookkeeping.sql", line)
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE IF EXISTS temp._migrations;",
        "DROP TABLE IF EXISTS migrations;",
        "DELETE FROM _migrations WHERE name = 'never-applied.sql';",
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY);",
    ],
)
def test_what_leaves_migrations_alone_is_not_refused(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write, statement: str
) -> None:
    """Another schema's table, another name, rows, the old runner's CREATE IF NOT EXISTS."""
    write_migration("001_a.sql", f"CREATE TABLE IF NOT EXISTS a (x);\n{statement}\n")
    assert run_migrations(db, migrations_dir) == ["001_a.sql"]
