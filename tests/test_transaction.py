"""transaction(): BEGIN IMMEDIATE, commit or roll back, savepoints when nested."""

from __future__ import annotations

import importlib
import sqlite3
import threading
from pathlib import Path

import pytest

from circuitforge_core.db import TransactionError, get_db, transaction


@pytest.fixture
def db(db_path: Path):  # type: ignore[no-untyped-def]
    connection = get_db(db_path)
    connection.execute("CREATE TABLE t (x INTEGER)")
    connection.commit()
    yield connection
    connection.close()


def values(db: sqlite3.Connection) -> list[int]:
    return [row[0] for row in db.execute("SELECT x FROM t ORDER BY x")]


def test_commits_on_success(db: sqlite3.Connection) -> None:
    """A block that ends normally is committed and visible to other connections."""
    with transaction(db) as same:
        assert same is db
        db.execute("INSERT INTO t VALUES (1)")
        assert db.in_transaction
    assert not db.in_transaction
    other = get_db(db.path)  # type: ignore[attr-defined]
    try:
        assert values(other) == [1]
    finally:
        other.close()


def test_rolls_back_on_any_exception(db: sqlite3.Connection) -> None:
    """Any exception, even a BaseException, undoes the block and propagates."""
    for error in (ValueError, KeyboardInterrupt):
        with pytest.raises(error), transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
            raise error
    assert values(db) == []
    assert not db.in_transaction


def test_uses_begin_immediate(db: sqlite3.Connection) -> None:
    """The block starts with BEGIN IMMEDIATE, before its first read."""
    seen: list[str] = []
    db.set_trace_callback(seen.append)
    with transaction(db):
        db.execute("SELECT count(*) FROM t").fetchone()
    db.set_trace_callback(None)
    assert seen[0] == "BEGIN IMMEDIATE"
    assert seen[-1] == "COMMIT"


def test_nested_block_is_a_savepoint(db: sqlite3.Connection) -> None:
    """An inner failure undoes only the inner block; the outer one still commits."""
    with transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), transaction(db):
            db.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError
        with transaction(db):
            db.execute("INSERT INTO t VALUES (3)")
            with transaction(db):
                db.execute("INSERT INTO t VALUES (4)")
    assert values(db) == [1, 3, 4]


def test_outer_failure_undoes_committed_inner_blocks(db: sqlite3.Connection) -> None:
    """A savepoint released inside a failing outer block is rolled back with it."""
    with pytest.raises(LookupError), transaction(db):
        with transaction(db):
            db.execute("INSERT INTO t VALUES (1)")
        raise LookupError
    assert values(db) == []


def test_block_that_commits_itself_is_an_error(db: sqlite3.Connection) -> None:
    """commit() inside the block breaks atomicity, so leaving it raises TransactionError."""
    with pytest.raises(TransactionError, match="ended the transaction itself"), transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
    assert not db.in_transaction


def test_inside_an_implicit_transaction_it_nests(db: sqlite3.Connection) -> None:
    """Inside a transaction opened by a plain INSERT, the block is a savepoint of it."""
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError), transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
        raise ValueError
    assert db.in_transaction
    db.commit()
    assert values(db) == [1]


def test_failed_commit_rolls_back(db_path: Path) -> None:
    """A COMMIT that fails (a deferred foreign key) leaves no transaction behind."""
    db = get_db(db_path)
    try:
        db.executescript(
            "CREATE TABLE p (id INTEGER PRIMARY KEY);"
            "CREATE TABLE c (pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);"
        )
        with pytest.raises(sqlite3.IntegrityError), transaction(db):
            db.execute("INSERT INTO c VALUES (42)")
        assert not db.in_transaction
        assert db.execute("SELECT count(*) FROM c").fetchone()[0] == 0
    finally:
        db.close()


def test_works_on_a_plain_sqlite3_connection(tmp_path: Path) -> None:
    """transaction() also serves connections that did not come from get_db."""
    plain = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    try:
        plain.execute("CREATE TABLE t (x)")
        with transaction(plain):
            plain.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError), transaction(plain):
            plain.execute("INSERT INTO t VALUES (2)")
            raise ValueError
        assert plain.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        plain.close()


def test_concurrent_read_modify_write_loses_nothing(db_path: Path) -> None:
    """Eight threads incrementing one counter through transaction(): no error, no lost update."""
    setup = get_db(db_path)
    setup.execute("CREATE TABLE counter (n INTEGER)")
    setup.execute("INSERT INTO counter VALUES (0)")
    setup.commit()
    setup.close()
    threads_count, per_thread = 8, 100
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work() -> None:
        db = get_db(db_path)
        try:
            barrier.wait(10)
            for _ in range(per_thread):
                with transaction(db):
                    (n,) = db.execute("SELECT n FROM counter").fetchone()
                    db.execute("UPDATE counter SET n = ?", (n + 1,))
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=work) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    check = get_db(db_path)
    try:
        assert check.execute("SELECT n FROM counter").fetchone()[0] == threads_count * per_thread
    finally:
        check.close()


def test_writer_queue_times_out_with_a_clear_error(db_path: Path) -> None:
    """A thread that cannot get the file's write lock in time gets 'database is locked'."""
    holder = get_db(db_path)
    waiter = get_db(db_path, busy_timeout=0.2)
    got_lock = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with transaction(holder):
            got_lock.set()
            release.wait(120)  # set as soon as the waiter has given up

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert got_lock.wait(60)
        with (
            pytest.raises(sqlite3.OperationalError, match="database is locked"),
            transaction(waiter),
        ):
            pass  # pragma: no cover - never entered
    finally:
        release.set()
        thread.join(60)
        holder.close()
        waiter.close()
    assert not thread.is_alive()


def test_writer_locks_of_many_files_stay_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Touching more files than the limit forgets idle locks instead of growing forever."""
    module = importlib.import_module("circuitforge_core.db.transaction")  # not the function

    monkeypatch.setattr(module, "_writer_locks", {})
    monkeypatch.setattr(module, "_WRITER_LOCKS_KEPT", 8)
    for number in range(30):
        db = get_db(tmp_path / f"user{number}.db")
        try:
            with transaction(db):
                db.execute("CREATE TABLE t (x)")
        finally:
            db.close()
        assert len(module._writer_locks) <= 8
