"""The migrations folder: one listing for every reader, and new_migration's next file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import (
    MigrationError,
    MigrationNameError,
    MigrationSourceError,
    NewMigration,
    lint_report,
    migration_status,
    new_migration,
    run_migrations,
)
from circuitforge_core.db.migrations import read_migrations

Write = Callable[[str, "str | bytes"], Path]


# -- one listing ---------------------------------------------------------------------


def test_every_reader_sees_the_same_files(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Only files ending in `.sql` count, for the runner, status, lint and new alike."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    write_migration("002_b.SQL", "CREATE TABLE IF NOT EXISTS b (x);")
    write_migration("README.md", "not a migration")
    (migrations_dir / "009_folder.sql").mkdir()  # a folder, whatever its name says
    assert [f.name for f in read_migrations(migrations_dir)] == ["001_a.sql"]
    assert run_migrations(db, migrations_dir) == ["001_a.sql"]
    assert [s.name for s in migration_status(db, migrations_dir)] == ["001_a.sql"]
    report = lint_report(migrations_dir)
    assert report.files == ("001_a.sql",)
    assert [(f.file, f.code) for f in report.findings] == [("002_b.SQL", "ignored-file")]
    assert new_migration(migrations_dir, "c").name == "002_c.sql"


# -- new_migration -------------------------------------------------------------------


def test_new_migration_creates_the_next_file_and_says_so(migrations_dir: Path) -> None:
    """001 in an empty folder, then 002; the path is the folder as given joined with the name."""
    first = new_migration(migrations_dir, "initial")
    assert first == NewMigration(migrations_dir / "001_initial.sql", 1, False)
    assert first.name == "001_initial.sql"
    assert first.path.read_text().startswith("-- 001_initial.sql: runs in one transaction")
    second = new_migration(str(migrations_dir), "add_tags")
    assert (second.path, second.number) == (migrations_dir / "002_add_tags.sql", 2)


def test_new_migration_keeps_the_width_of_the_highest_file(tmp_path: Path) -> None:
    """After 0041 comes 0042 (ignoring 0007 and README.md); after 7_ comes 8_."""
    four = tmp_path / "four"
    four.mkdir()
    (four / "0041_old.sql").write_text("SELECT 1;")
    (four / "0007_older.sql").write_text("SELECT 1;")
    (four / "README.md").write_text("not a migration")
    assert new_migration(four, "add_pins").path == four / "0042_add_pins.sql"
    one = tmp_path / "one"
    one.mkdir()
    (one / "7_x.sql").write_text("SELECT 1;")
    assert new_migration(one, "y").path == one / "8_y.sql"


def test_a_new_no_transaction_file_is_run_that_way(
    db: sqlite3.Connection, migrations_dir: Path
) -> None:
    """no_transaction=True: the marker on the first line, so the runner may VACUUM in it."""
    created = new_migration(migrations_dir, "compact", no_transaction=True)
    assert created.no_transaction
    lines = created.path.read_text().splitlines()
    assert lines[0] == "-- cf-db: no-transaction"
    with created.path.open("a") as handle:
        handle.write("VACUUM;\n")
    assert run_migrations(db, migrations_dir) == ["001_compact.sql"]


@pytest.mark.parametrize(
    "name", ["Add_Tags", "add tags", "../escape", "sub/dir", "add_tags.sql", "", "x" * 101]
)
def test_new_migration_refuses_unsafe_names(migrations_dir: Path, name: str) -> None:
    """MigrationNameError (also a ValueError) naming the rule; nothing is created."""
    with pytest.raises(MigrationNameError, match="not a safe migration name") as caught:
        new_migration(migrations_dir, name)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, MigrationError)
    assert list(migrations_dir.iterdir()) == []


def test_new_migration_refuses_a_taken_name_or_an_outgrown_width(migrations_dir: Path) -> None:
    """A name any number already has, and a next number wider than the folder's: refused."""
    (migrations_dir / "2_add_tags.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationNameError, match="already has a migration named") as taken:
        new_migration(migrations_dir, "add_tags")
    assert taken.value.name == "2_add_tags.sql"
    (migrations_dir / "9_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationNameError, match="needs more digits than the 1"):
        new_migration(migrations_dir, "y")
    assert sorted(p.name for p in migrations_dir.iterdir()) == ["2_add_tags.sql", "9_x.sql"]


def test_new_migration_needs_an_existing_folder(tmp_path: Path) -> None:
    """A missing folder is not created (a typo would start a second one); a file is no folder."""
    with pytest.raises(MigrationSourceError, match="does not exist"):
        new_migration(tmp_path / "migrtions", "x")
    assert not (tmp_path / "migrtions").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(MigrationSourceError, match="is not a folder"):
        new_migration(tmp_path / "file", "x")


# -- entries that cannot be read -------------------------------------------------------


def _every_reader_refuses(db: sqlite3.Connection, folder: Path, *fragments: str) -> None:
    """run_migrations, status and lint all raise MigrationSourceError naming the entry."""
    for reader in (
        lambda: run_migrations(db, folder),
        lambda: migration_status(db, folder),
        lambda: lint_report(folder),
    ):
        with pytest.raises(MigrationSourceError) as caught:
            reader()
        message = str(caught.value)
        message.encode("utf-8")  # printable: no lone surrogates
        for fragment in (str(folder), *fragments):
            assert fragment in message, message
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'a'").fetchone() == (0,)


def test_a_dangling_symlink_is_an_error_not_a_gap(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Left out, 002 would run later, after 003: it is named instead, and nothing runs."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    (migrations_dir / "002_b.sql").symlink_to(migrations_dir / "elsewhere" / "002_b.sql")
    write_migration("003_c.sql", "CREATE TABLE IF NOT EXISTS c (x);")
    _every_reader_refuses(db, migrations_dir, "002_b.sql", "symbolic link", "does not exist")


def test_a_symlink_loop_and_a_fifo_are_errors(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    loop = migrations_dir / "002_loop.sql"
    loop.symlink_to(loop)
    _every_reader_refuses(db, migrations_dir, "002_loop.sql", "loops back")
    loop.unlink()
    os.mkfifo(migrations_dir / "002_pipe.sql")
    _every_reader_refuses(db, migrations_dir, "002_pipe.sql", "FIFO")


def test_symlinks_to_files_run_and_to_folders_are_ignored(
    db: sqlite3.Connection, migrations_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "a.sql").write_text("CREATE TABLE IF NOT EXISTS a (x);")
    (migrations_dir / "001_a.sql").symlink_to(shared / "a.sql")
    (migrations_dir / "002_folder.sql").symlink_to(shared)
    assert run_migrations(db, migrations_dir) == ["001_a.sql"]


def test_a_file_name_that_is_not_utf8_is_named_with_its_bytes(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """The actual bytes on disk: an error naming the folder and the name, escaped."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    raw = os.path.join(os.fsencode(migrations_dir), b"002_caf\xe9.sql")
    with open(raw, "wb") as handle:
        handle.write(b"CREATE TABLE IF NOT EXISTS b (x);")
    _every_reader_refuses(db, migrations_dir, "002_caf\\xe9.sql", "not valid UTF-8", "Rename")


def test_an_undecodable_name_that_is_no_migration_is_left_alone(
    db: sqlite3.Connection, migrations_dir: Path, write_migration: Write
) -> None:
    """Not a .sql file: the runner ignores it, and lint shows its name printably."""
    write_migration("001_a.sql", "CREATE TABLE IF NOT EXISTS a (x);")
    for name in (b"notes-caf\xe9.txt", b"002_caf\xe9.SQL"):
        with open(os.path.join(os.fsencode(migrations_dir), name), "wb") as handle:
            handle.write(b"SELECT 1;")
    assert run_migrations(db, migrations_dir) == ["001_a.sql"]
    findings = [(f.file, f.code) for f in lint_report(migrations_dir).findings]
    assert findings == [("002_caf\\xe9.SQL", "ignored-file")]
