"""transaction(): BEGIN IMMEDIATE, commit or roll back, savepoints when nested."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from circuitforge_core.db import TransactionError, get_db, transaction
from circuitforge_core.db.writer_lock import WriterLock, WriterLocks


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
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert got_lock.wait(10)
        with (
            pytest.raises(sqlite3.OperationalError, match="database is locked"),
            transaction(waiter),
        ):
            pass  # pragma: no cover - never entered
    finally:
        release.set()
        thread.join(10)
        holder.close()
        waiter.close()
    assert not thread.is_alive()


def test_writer_locks_of_many_files_stay_bounded(tmp_path: Path) -> None:
    """Touching more files than the limit forgets idle locks instead of growing forever."""
    locks = WriterLocks(kept=8)
    held = locks.for_path(str(tmp_path / "busy.db"))
    assert held.acquire(timeout=1)
    for number in range(30):
        locks.for_path(str(tmp_path / f"user{number}.db"))
        assert len(locks) <= 8
    assert locks.for_path(str(tmp_path / "busy.db")) is held  # a held lock is never forgotten
    held.release()


# -- the writer lock's fairness ----------------------------------------------------------


def _line_up(lock: WriterLock, count: int) -> tuple[list[threading.Thread], list[int]]:
    """Start ``count`` threads that wait for the held ``lock`` in a known order."""
    order: list[int] = []

    def wait_for_it(number: int) -> None:
        assert lock.acquire(timeout=30)
        order.append(number)
        lock.release()

    threads = []
    for number in range(count):
        thread = threading.Thread(target=wait_for_it, args=(number,))
        thread.start()
        threads.append(thread)
        for _ in range(3000):  # bounded: this thread is queued within moments
            if lock.waiting == number + 1:
                break
            time.sleep(0.001)
        assert lock.waiting == number + 1
    return threads, order


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)


def test_with_no_grace_the_lock_is_handed_over_in_arrival_order() -> None:
    """handoff_after=0: strict first-in first-out, and the releaser cannot barge back in."""
    lock = WriterLock(handoff_after=0)
    assert lock.acquire(timeout=1)
    threads, order = _line_up(lock, 6)
    lock.release()
    assert not lock.acquire(timeout=0)  # handed to the first waiter, not free for us
    _join(threads)
    assert order == list(range(6))
    assert not lock.locked()


def test_a_short_wait_lets_a_newcomer_take_a_free_lock() -> None:
    """While the longest wait is under the threshold, a release frees the lock for anyone."""
    lock = WriterLock(handoff_after=60)
    assert lock.acquire(timeout=1)
    threads, order = _line_up(lock, 1)
    lock.release()
    assert lock.acquire(timeout=0)  # barged in: no thread switch needed
    lock.release()
    _join(threads)
    assert order == [0]


def test_a_waiter_past_the_threshold_gets_the_lock_from_the_release() -> None:
    """Once the head waited longer than handoff_after, release() hands the lock to it."""
    lock = WriterLock(handoff_after=0.05)
    assert lock.acquire(timeout=1)
    threads, order = _line_up(lock, 3)
    time.sleep(0.06)  # let the waits pass the threshold (not an assertion on absence)
    lock.release()
    assert not lock.acquire(timeout=0)
    _join(threads)
    assert order == [0, 1, 2]


def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    """acquire(timeout) gives up with False and is no longer counted as waiting."""
    lock = WriterLock()
    assert lock.acquire(timeout=1)
    assert not lock.acquire(timeout=0.05)
    assert lock.waiting == 0
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


@pytest.mark.parametrize("handoff_after", [0.0, 0.0005, 60.0])
def test_the_writer_lock_excludes_and_never_loses_a_wakeup(handoff_after: float) -> None:
    """8 threads x 300 acquisitions with short timeouts mixed in: one holder at a time,
    every thread finishes."""
    lock = WriterLock(handoff_after=handoff_after)
    inside = 0
    most_inside = 0
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(number: int) -> None:
        nonlocal inside, most_inside
        try:
            barrier.wait(10)
            for attempt in range(300):
                timeout = 0.0001 if (attempt + number) % 7 == 0 else 30
                if not lock.acquire(timeout=timeout):
                    assert timeout < 1
                    continue
                inside += 1
                most_inside = max(most_inside, inside)
                inside -= 1
                lock.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    _join(threads)
    assert errors == []
    assert most_inside == 1
    assert not lock.locked()


def test_the_writer_lock_takes_threading_lock_arguments() -> None:
    """acquire(blocking=False) tries once; acquire() with no timeout waits as long as it takes."""
    lock = WriterLock()
    assert lock.acquire(blocking=False)
    assert not lock.acquire(blocking=False)
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(lock.acquire()))
    thread.start()
    for _ in range(3000):  # bounded: the thread queues within moments
        if lock.waiting:
            break
        time.sleep(0.001)
    lock.release()
    thread.join(30)
    assert not thread.is_alive()
    assert got == [True]
    lock.release()
