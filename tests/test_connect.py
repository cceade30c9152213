"""get_db: the pragmas it promises, the files it creates, and its errors on bad input."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from circuitforge_core.db import Connection, OpenError, get_db


def pragma(db: sqlite3.Connection, name: str) -> object:
    return db.execute(f"PRAGMA {name}").fetchone()[0]


def test_defaults_are_applied_and_checked(db_path: Path) -> None:
    """A new connection is WAL, enforces foreign keys and carries the production pragmas."""
    db = get_db(db_path)
    try:
        assert isinstance(db, sqlite3.Connection)
        assert isinstance(db, Connection)
        assert pragma(db, "journal_mode") == "wal"
        assert pragma(db, "foreign_keys") == 1
        assert pragma(db, "busy_timeout") == 5000
        assert pragma(db, "synchronous") == 1  # NORMAL
        assert pragma(db, "journal_size_limit") == 64 * 1024 * 1024
        assert pragma(db, "cache_size") == -8192
        assert pragma(db, "mmap_size") == 0
        assert pragma(db, "temp_store") == 2  # MEMORY
        assert db.in_transaction is False
        assert db.path == str(db_path)
        assert db.readonly is False
    finally:
        db.close()


def test_settings_can_be_chosen(db_path: Path) -> None:
    """busy_timeout, cache, mmap, journal limit and synchronous are per call."""
    db = get_db(
        db_path,
        busy_timeout=1.5,
        cache_size_kib=2048,
        mmap_size=1 << 20,
        journal_size_limit=1 << 20,
        synchronous="full",
    )
    try:
        assert pragma(db, "busy_timeout") == 1500
        assert pragma(db, "cache_size") == -2048
        assert pragma(db, "journal_size_limit") == 1 << 20
        assert pragma(db, "synchronous") == 2
        assert db.busy_timeout == 1.5
    finally:
        db.close()


def test_bad_synchronous_is_refused(db_path: Path) -> None:
    """An unknown synchronous level is a ValueError, not a silently ignored pragma."""
    with pytest.raises(ValueError, match="synchronous"):
        get_db(db_path, synchronous="SOMETIMES")


def test_creates_file_and_missing_folders(tmp_path: Path) -> None:
    """The file and every missing parent folder are created; str paths work too."""
    path = tmp_path / "a" / "b" / "c" / "app.db"
    db = get_db(str(path))
    db.close()
    assert path.is_file()


def test_relative_path_is_made_absolute(chdir_tmp: Path) -> None:
    """A relative path is resolved once, so the connection knows its file wherever cwd goes."""
    db = get_db("rel.db")
    try:
        assert db.path == str(chdir_tmp / "rel.db")
    finally:
        db.close()


def test_path_with_uri_characters(tmp_path: Path) -> None:
    """Characters that mean something in a URI (?, #, %, spaces) stay part of the file name."""
    path = tmp_path / "we?ird #name %20.db"
    db = get_db(path)
    db.execute("CREATE TABLE t (x)")
    db.close()
    assert path.is_file()


def test_implicit_transaction_takes_the_write_lock(db_path: Path) -> None:
    """A plain INSERT opens BEGIN IMMEDIATE: a second writer waits instead of failing."""
    first = get_db(db_path)
    second = get_db(db_path, busy_timeout=60)
    began = threading.Event()
    committed: list[bool] = []

    def commit_once_the_second_writer_begins() -> None:
        # The trace fires as BEGIN IMMEDIATE starts to run, before it asks for the lock.
        committed.append(began.wait(60))
        first.commit()

    try:
        first.execute("CREATE TABLE t (x)")
        first.commit()
        first.execute("SELECT * FROM t").fetchall()
        first.execute("INSERT INTO t VALUES (1)")  # holds the write lock now
        second.set_trace_callback(
            lambda sql: began.set() if sql.upper().startswith("BEGIN") else None
        )
        releaser = threading.Thread(target=commit_once_the_second_writer_begins)
        releaser.start()
        second.execute("INSERT INTO t VALUES (2)")  # waits on the busy timeout, then succeeds
        second.commit()
        releaser.join(60)
        assert not releaser.is_alive()
        assert committed == [True]
        assert second.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    finally:
        first.close()
        second.close()


def test_trace_shows_begin_immediate(db_path: Path) -> None:
    """The implicit transaction is literally BEGIN IMMEDIATE, on every Python version."""
    db = get_db(db_path)
    seen: list[str] = []
    try:
        db.execute("CREATE TABLE t (x)")
        db.set_trace_callback(seen.append)
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    finally:
        db.close()
    assert seen[0].upper() == "BEGIN IMMEDIATE"


def test_commit_rollback_and_with_still_work(db_path: Path) -> None:
    """Product code written for the old module (commit, rollback, with db) behaves as before."""
    db = get_db(db_path)
    try:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.rollback()
        db.execute("INSERT INTO t VALUES (2)")
        db.commit()
        with db:
            db.execute("INSERT INTO t VALUES (3)")
        with pytest.raises(ZeroDivisionError), db:
            db.execute("INSERT INTO t VALUES (4)")
            _ = 1 / 0
        assert [r[0] for r in db.execute("SELECT x FROM t ORDER BY x")] == [2, 3]
    finally:
        db.close()


def test_usable_from_another_thread(db_path: Path) -> None:
    """check_same_thread is off: a connection may be handed to another thread."""
    db = get_db(db_path)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(pragma(db, "foreign_keys")))
    worker.start()
    worker.join(5)
    db.close()
    assert not worker.is_alive()
    assert result == [1]


def test_readonly_opens_existing_and_refuses_writes(db_path: Path) -> None:
    """readonly=True reads an existing database and refuses to write it."""
    db = get_db(db_path)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    ro = get_db(db_path, readonly=True)
    try:
        assert ro.readonly is True
        assert ro.execute("SELECT x FROM t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError):
            ro.execute("INSERT INTO t VALUES (2)")
    finally:
        ro.close()


def test_readonly_never_creates(tmp_path: Path) -> None:
    """readonly=True on a missing file raises OpenError naming it and creates nothing."""
    path = tmp_path / "missing" / "app.db"
    with pytest.raises(OpenError, match="does not exist") as info:
        get_db(path, readonly=True)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert not path.parent.exists()


def test_folder_is_refused(tmp_path: Path) -> None:
    """A folder given as the database raises OpenError naming it."""
    with pytest.raises(OpenError, match="is a folder") as info:
        get_db(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    """A file that is not a database raises OpenError naming it, and is left as it was."""
    path = tmp_path / "notes.db"
    junk = b"This is a text file, not SQLite.\n" * 200
    path.write_bytes(junk)
    with pytest.raises(OpenError, match="not a usable SQLite database") as info:
        get_db(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == junk
    assert not Path(str(path) + "-wal").exists()


def test_parent_is_a_file(tmp_path: Path) -> None:
    """A path whose parent is a regular file raises OpenError naming the path."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OpenError) as info:
        get_db(blocker / "app.db")
    assert str(blocker / "app.db") in str(info.value)


def test_in_memory_names_are_refused() -> None:
    """':memory:' and '' are refused with a hint: WAL needs a file."""
    for name in (":memory:", ""):
        with pytest.raises(OpenError, match="temporary folder"):
            get_db(name)


def test_open_errors_say_why_in_their_reason(tmp_path: Path) -> None:
    """OpenError.reason names the cause, for code that must not read the message."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"This is a text file, not SQLite.\n" * 200)
    damaged = tmp_path / "damaged.db"
    get_db(damaged).close()
    data = bytearray(damaged.read_bytes())
    data[100:600] = b"\xff" * 500  # page 1 after the header: sqlite_schema's b-tree
    damaged.write_bytes(bytes(data))
    (tmp_path / "blocker").write_text("x")
    cases = [
        (lambda: get_db(tmp_path / "missing.db", readonly=True), "missing"),
        (lambda: get_db(tmp_path), "not_a_file"),
        (lambda: get_db(":memory:"), "not_a_file"),
        (lambda: get_db(tmp_path / "blocker" / "app.db"), "not_a_file"),
        (lambda: get_db(junk), "not_a_database"),
        (lambda: get_db(damaged), "damaged"),
    ]
    for attempt, reason in cases:
        with pytest.raises(OpenError) as info:
            attempt()
        assert info.value.reason == reason, info.value


def test_wrong_path_type() -> None:
    """A path that is neither str nor PathLike is a TypeError."""
    with pytest.raises(TypeError):
        get_db(42)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
@pytest.mark.parametrize(
    ("mode", "what"),
    [(0o600, "unreadable"), (0o644, "readable but not writable")],
)
def test_file_without_permission_names_the_path(
    mode: int, what: str, run_as_nobody: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """An unreadable or write-protected file raises OpenError naming it, never a read-only handle.

    SQLite silently opens a write-protected file read-only; get_db refuses at
    open instead of failing at the first write. Run as another user.
    """
    # pytest's own temporary folders are private to root; this one must be traversable.
    folder = Path(tempfile.mkdtemp(prefix="cf-db-perm-"))
    try:
        _check_permission_denied(folder, mode, run_as_nobody)
    finally:
        shutil.rmtree(folder)


def _check_permission_denied(
    tmp_path: Path, mode: int, run_as_nobody: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    path = tmp_path / "private.db"
    db = get_db(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    path.chmod(mode)
    tmp_path.chmod(0o777)  # the folder is not the obstacle: SQLite may create -wal and -shm
    script = (
        "import sys\n"
        "from circuitforge_core.db import get_db, OpenError\n"
        "try:\n"
        "    get_db(sys.argv[1])\n"
        "except OpenError as exc:\n"
        "    print(exc)\n"
        "    print('reason:', exc.reason)\n"
        "    sys.exit(3)\n"
    )
    result = run_as_nobody(script, str(path))
    assert result.returncode == 3, result.stderr
    assert str(path) in result.stdout
    assert "permission denied" in result.stdout
    assert "reason: permission" in result.stdout


def test_existing_rollback_journal_database_is_switched_to_wal(db_path: Path) -> None:
    """A database created by the old module (rollback journal) becomes WAL on open."""
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.execute("CREATE TABLE t (x)")
    old.commit()
    old.close()
    db = get_db(db_path)
    try:
        assert pragma(db, "journal_mode") == "wal"
    finally:
        db.close()


def test_create_false_opens_only_an_existing_file(db_path: Path) -> None:
    """create=False: a missing file (or folder) stays missing, with reason 'missing'; an
    existing one opens read-write with the usual pragmas."""
    with pytest.raises(OpenError, match="create=False never creates") as caught:
        get_db(db_path, create=False)
    assert caught.value.reason == "missing"
    assert not db_path.parent.exists()
    get_db(db_path).close()
    db = get_db(db_path, create=False)
    try:
        db.execute("CREATE TABLE t (x)")
        db.commit()
        assert pragma(db, "journal_mode") == "wal"
        assert pragma(db, "foreign_keys") == 1
    finally:
        db.close()


def test_create_false_for_encrypted_files(db_path: Path) -> None:
    """The keyed open honours it too: nothing created, the existing file opened with its key."""
    pytest.importorskip("sqlcipher3")
    key = "a passphrase for the test"
    with pytest.raises(OpenError) as caught:
        get_db(db_path, key=key, create=False)
    assert caught.value.reason == "missing"
    assert not db_path.exists()
    get_db(db_path, key=key).close()
    get_db(db_path, key=key, create=False).close()
