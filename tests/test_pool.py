"""ConnectionPool: reuse, limits and timeout, a budget shared by pools, the reset on check-in,
once-only migrations, replaced and deleted files, close(), leaks and fork()."""

from __future__ import annotations

import gc
import logging
import os
import random
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from circuitforge_core.db import (
    Connection,
    ConnectionPool,
    DBError,
    MigrationError,
    PoolClosedError,
    PoolTimeoutError,
    get_db,
)
from circuitforge_core.db.pool import ConnectionBudget

JOIN_TIMEOUT = 30.0


@pytest.fixture
def pool(db_path: Path) -> Iterator[ConnectionPool]:
    with ConnectionPool(db_path, max_size=2, timeout=5.0) as pool:
        yield pool


def start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck (deadlock?)"


def wait_for_waiters(pool: ConnectionPool, count: int = 1) -> None:
    """Return once ``count`` threads are blocked in the pool (its own gauge says so)."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while pool.stats().waiting < count:
        assert time.monotonic() < deadline, f"{count} thread(s) never started waiting"
        time.sleep(0.001)


def make_table(pool: ConnectionPool, rows: int = 0) -> None:
    with pool.connection() as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(rows)])
        db.commit()


# -- reuse and limits ------------------------------------------------------------------


def test_a_returned_connection_is_reused(pool: ConnectionPool) -> None:
    """Two checkouts in a row get the same connection; only one file handle set is opened."""
    with pool.connection() as first:
        assert isinstance(first, Connection)
        assert first.path == pool.path
    with pool.connection() as second:
        assert second is first
    stats = pool.stats()
    assert (stats.opened, stats.open, stats.idle, stats.busy, stats.checkouts) == (1, 1, 1, 0, 2)


def test_pool_connections_are_hardened_like_get_db(pool: ConnectionPool) -> None:
    """A pooled connection is in WAL mode with foreign keys on."""
    with pool.connection() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_connect_kwargs_reach_get_db(db_path: Path) -> None:
    """connect_kwargs are passed to get_db for every connection the pool opens."""
    pool = ConnectionPool(db_path, connect_kwargs={"cache_size_kib": 1234})
    with pool, pool.connection() as db:
        assert db.execute("PRAGMA cache_size").fetchone()[0] == -1234


def test_checkout_times_out_when_every_connection_is_busy(pool: ConnectionPool) -> None:
    """With max_size busy, a third caller waits `timeout`, then PoolTimeoutError names the file."""
    pool.timeout = 0.3
    with pool.connection(), pool.connection():
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as caught, pool.connection():
            pass
        waited = time.monotonic() - started
    assert 0.25 <= waited < 3.0
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, DBError)
    assert error.path == pool.path
    assert error.limit == 2
    assert pool.path in str(error)
    assert "all 2 connections" in str(error)
    assert pool.stats().timeouts == 1


def test_a_waiter_gets_the_connection_someone_returns(pool: ConnectionPool) -> None:
    """A caller blocked on a full pool proceeds as soon as a connection comes back."""
    got: list[float] = []
    release = threading.Event()

    def holder() -> None:
        with pool.connection():
            release.wait(JOIN_TIMEOUT)

    holders = [start(holder), start(holder)]
    deadline = time.monotonic() + JOIN_TIMEOUT
    while pool.stats().busy < 2:
        assert time.monotonic() < deadline, "the holders never got their connections"
        time.sleep(0.005)

    def waiter() -> None:
        started = time.monotonic()
        with pool.connection():
            got.append(time.monotonic() - started)

    waiting = start(waiter)
    wait_for_waiters(pool)
    assert not got, "the waiter should still be waiting"
    release.set()
    join_all([*holders, waiting])
    assert len(got) == 1
    assert pool.stats().open == 2


def test_many_threads_share_a_small_pool_without_deadlock(db_path: Path) -> None:
    """32 threads doing reads and writes through a pool of 3 all finish; counts add up."""
    with ConnectionPool(db_path, max_size=3, timeout=20.0) as pool:
        make_table(pool)
        barrier = threading.Barrier(32)
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                barrier.wait(JOIN_TIMEOUT)
                for i in range(20):
                    with pool.connection() as db:
                        if i % 4 == 0:
                            db.execute("INSERT INTO t (v) VALUES (?)", (f"{n}-{i}",))
                            db.commit()
                        else:
                            db.execute("SELECT count(*) FROM t").fetchone()
            except BaseException as exc:
                errors.append(exc)

        join_all([start(lambda n=n: work(n)) for n in range(32)])
        assert errors == []
        stats = pool.stats()
        assert stats.open <= 3
        assert stats.busy == 0
        with pool.connection() as db:
            assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 32 * 5


def test_pools_sharing_a_budget_stay_under_its_cap_together(tmp_path: Path) -> None:
    """Two pools on one ConnectionBudget(2): a third connection evicts the other file's idle one."""
    budget = ConnectionBudget(2)
    with (
        ConnectionPool(tmp_path / "a.db", budget=budget) as a,
        ConnectionPool(tmp_path / "b.db", budget=budget) as b,
    ):
        with a.connection(), a.connection():
            pass
        assert (budget.open_connections, budget.idle_connections) == (2, 2)
        with b.connection() as db:
            assert db.execute("SELECT 1").fetchone() == (1,)
            assert (budget.open_connections, budget.busy_connections) == (2, 1)
        assert (a.stats().open, a.stats().closed, b.stats().open) == (1, 1, 1)
        assert budget.evictions == 1


def test_a_budget_without_eviction_makes_the_other_pool_wait(tmp_path: Path) -> None:
    """With evict_idle=False an idle connection of another pool is never closed for a checkout."""
    budget = ConnectionBudget(1, evict_idle=False)
    with (
        ConnectionPool(tmp_path / "a.db", budget=budget) as a,
        ConnectionPool(tmp_path / "b.db", budget=budget, timeout=0.05) as b,
    ):
        with a.connection():
            pass
        with (
            pytest.raises(PoolTimeoutError, match="1 connections open across all") as caught,
            b.connection(),
        ):
            pass
        assert caught.value.path is None
        assert (a.stats().open, b.stats().timeouts, budget.evictions) == (1, 1, 0)


def test_a_waiter_for_a_shared_cap_gets_its_own_pools_returned_connection(
    tmp_path: Path,
) -> None:
    """Without eviction, a checkout waiting for the cap takes its pool's connection once back."""
    budget = ConnectionBudget(1, evict_idle=False)
    with ConnectionPool(tmp_path / "a.db", budget=budget, timeout=JOIN_TIMEOUT) as pool:
        holding, release = threading.Event(), threading.Event()
        got: list[Connection] = []

        def hold() -> None:
            with pool.connection() as db:
                got.append(db)
                holding.set()
                release.wait(JOIN_TIMEOUT)

        def second() -> None:
            with pool.connection() as db:
                got.append(db)

        holder = start(hold)
        assert holding.wait(JOIN_TIMEOUT)
        waiter = start(second)
        wait_for_waiters(pool)  # this pool has room (max_size 8), the budget has not
        assert len(got) == 1
        release.set()
        join_all([holder, waiter])
        assert got[1] is got[0]
        assert (pool.stats().opened, pool.stats().timeouts) == (1, 0)


def test_invalid_sizes_are_refused(db_path: Path) -> None:
    """max_size below 1 or a negative timeout is a ValueError at construction."""
    with pytest.raises(ValueError, match="max_size"):
        ConnectionPool(db_path, max_size=0)
    with pytest.raises(ValueError, match="timeout"):
        ConnectionPool(db_path, timeout=-1)


# -- the reset on check-in -------------------------------------------------------------


def test_an_open_transaction_is_rolled_back_with_a_warning(
    pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    """Work left uncommitted when the block ends is rolled back, and a warning says so."""
    make_table(pool)
    with caplog.at_level(logging.WARNING, logger="circuitforge_core.db"), pool.connection() as db:
        db.execute("INSERT INTO t (v) VALUES ('forgotten')")
        assert db.in_transaction
    assert "transaction still open" in caplog.text
    with pool.connection() as db:
        assert not db.in_transaction
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert pool.stats().rollbacks_on_return == 1


def test_a_failing_block_rolls_back_without_the_forgot_warning(
    pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception out of the block rolls its work back; no 'forgot to commit' warning."""
    make_table(pool)
    with (
        caplog.at_level(logging.WARNING, logger="circuitforge_core.db"),
        pytest.raises(RuntimeError),
        pool.connection() as db,
    ):
        db.execute("INSERT INTO t (v) VALUES ('half done')")
        raise RuntimeError("boom")
    assert "transaction still open" not in caplog.text
    with pool.connection() as db:
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0


def test_unfinished_cursors_are_closed_so_the_wal_can_be_checkpointed(db_path: Path) -> None:
    """An unfinished SELECT is reset at check-in: a TRUNCATE checkpoint then empties the WAL."""
    with ConnectionPool(db_path, max_size=1) as pool:
        make_table(pool, rows=500)
        with pool.connection() as db:
            cursor = db.execute("SELECT v FROM t")
            cursor.fetchone()  # one row of 500: the statement keeps its read snapshot
            assert not db.in_transaction
            _write_more(db_path)
            assert _truncate_checkpoint(db_path)[0] == 1, "the snapshot should block it"
        busy, log_frames, checkpointed = _truncate_checkpoint(db_path)
        assert busy == 0
        assert log_frames == checkpointed == 0
        assert os.path.getsize(str(db_path) + "-wal") == 0
        with pytest.raises(sqlite3.ProgrammingError):
            cursor.fetchone()  # using a cursor after returning its connection is a bug


def _write_more(path: Path) -> None:
    writer = get_db(path)
    try:
        for i in range(50):
            writer.execute("INSERT INTO t (v) VALUES (?)", (f"more {i}",))
            writer.commit()
    finally:
        writer.close()


def _truncate_checkpoint(path: Path) -> tuple[int, int, int]:
    checkpointer = get_db(path, busy_timeout=0.1)
    try:
        row = checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return (row[0], row[1], row[2])
    finally:
        checkpointer.close()


def test_cursors_made_every_way_are_tracked(pool: ConnectionPool) -> None:
    """cursor(), execute(), executemany() and blobopen() handles are all closed at check-in."""
    make_table(pool, rows=3)
    with pool.connection() as db:
        db.execute("CREATE TABLE b (data BLOB)")
        db.execute("INSERT INTO b VALUES (zeroblob(8))")
        db.commit()
        handles: list[sqlite3.Cursor] = [
            db.cursor(),
            db.execute("SELECT * FROM t"),
            db.executemany("INSERT INTO t (v) VALUES (?)", [("x",)]),
        ]
        db.rollback()
        blob = db.blobopen("b", "data", 1)
    for handle in handles:
        with pytest.raises(sqlite3.ProgrammingError):
            handle.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError):
        blob.read()


@pytest.mark.parametrize("key", [None, "passphrase"])
def test_blobs_closed_by_their_user_check_in_cleanly(db_path: Path, key: str | None) -> None:
    """blobopen on plain and encrypted pooled connections, closed in a with block, on every
    driver (pysqlite3 and sqlcipher3 call it open_blob and cannot close a weakly held blob)."""
    if key is not None:
        pytest.importorskip("sqlcipher3")
    with ConnectionPool(db_path, max_size=1, key=key) as pool:
        with pool.connection() as db:
            db.execute("CREATE TABLE b (data BLOB)")
            db.execute("INSERT INTO b VALUES (zeroblob(4))")
            db.commit()
            with db.blobopen("b", "data", 1) as blob:
                blob.write(b"1234")
            left_open = db.blobopen("b", "data", 1, readonly=True)
        with pool.connection() as db:
            assert db.execute("SELECT data FROM b").fetchone()[0] == b"1234"
        with pytest.raises(db.ProgrammingError):
            left_open.read()


def test_row_factory_and_text_factory_do_not_leak_between_checkouts(db_path: Path) -> None:
    """What one block set on the connection is put back to the pool's own choice."""
    with ConnectionPool(db_path, max_size=1, row_factory=sqlite3.Row) as pool:
        with pool.connection() as db:
            assert db.row_factory is sqlite3.Row
            db.row_factory = None
            db.text_factory = bytes
        with pool.connection() as db:
            assert db.row_factory is sqlite3.Row
            assert db.text_factory is str
            assert db.execute("SELECT 'x' AS v").fetchone()["v"] == "x"


def test_a_connection_closed_by_its_user_is_replaced(pool: ConnectionPool) -> None:
    """Closing the connection inside the block does not poison the pool."""
    with pool.connection() as db:
        db.close()
    with pool.connection() as db:
        assert db.execute("SELECT 1").fetchone() == (1,)
    stats = pool.stats()
    assert (stats.opened, stats.closed, stats.open) == (2, 1, 1)


def test_a_connection_that_hit_corruption_is_discarded(db_path: Path) -> None:
    """A block that fails with SQLITE_CORRUPT gives its connection back to be closed, not kept."""
    with ConnectionPool(db_path) as pool:
        make_table(pool, rows=2000)
    size = os.path.getsize(db_path)
    with open(db_path, "r+b") as handle:  # garbage over every page but the first
        handle.seek(4096)
        handle.write(b"\xa5" * (size - 4096))
    with ConnectionPool(db_path) as pool:
        with pytest.raises(sqlite3.DatabaseError) as caught, pool.connection() as db:
            db.execute("SELECT count(*), max(v) FROM t").fetchone()
        assert caught.value.sqlite_errorcode & 0xFF == 11  # SQLITE_CORRUPT
        stats = pool.stats()
        assert (stats.open, stats.closed) == (0, 1)


# -- migrations ------------------------------------------------------------------------


def test_concurrent_first_use_runs_migrations_once(
    db_path: Path, write_migration: Callable[[str, str], Path], migrations_dir: Path
) -> None:
    """24 threads asking at once: the folder runs once, before anyone gets a connection."""
    write_migration("001_t.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
    write_migration(
        "002_count.sql",
        "CREATE TABLE runs (n INTEGER); INSERT INTO runs VALUES (1);",
    )
    with ConnectionPool(db_path, migrations=migrations_dir, max_size=4, timeout=20) as pool:
        barrier = threading.Barrier(24)
        seen: list[int] = []
        errors: list[BaseException] = []

        def first_use() -> None:
            try:
                barrier.wait(JOIN_TIMEOUT)
                with pool.connection() as db:
                    seen.append(db.execute("SELECT count(*) FROM runs").fetchone()[0])
            except BaseException as exc:
                errors.append(exc)

        join_all([start(first_use) for _ in range(24)])
        assert errors == []
        assert seen == [1] * 24
        assert pool.stats().migration_runs == 1


def test_a_failed_migration_fails_the_checkout_and_is_retried_next_time(
    db_path: Path, write_migration: Callable[[str, str], Path], migrations_dir: Path
) -> None:
    """A broken file raises to the caller, nothing is handed out; once fixed, the next call runs."""
    path = write_migration("001_bad.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY);\nNOT SQL;")
    with ConnectionPool(db_path, migrations=migrations_dir) as pool:
        with pytest.raises(MigrationError, match=r"001_bad\.sql"), pool.connection():
            pass
        assert pool.stats().busy == 0
        path.write_text("CREATE TABLE t (id INTEGER PRIMARY KEY);\n", encoding="utf-8")
        with pool.connection() as db:
            assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert pool.stats().migration_runs == 1


# -- replaced and deleted files --------------------------------------------------------


def test_a_replaced_file_is_noticed_and_reopened(db_path: Path, tmp_path: Path) -> None:
    """Renaming a restored backup over the live file: the next checkout serves the new file."""
    with ConnectionPool(db_path, max_size=2) as pool:
        make_table(pool)
        with pool.connection() as db:
            db.execute("INSERT INTO t (v) VALUES ('before restore')")
            db.commit()
        backup = tmp_path / "backup.db"
        restored = get_db(backup)
        restored.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        restored.execute("INSERT INTO t (v) VALUES ('from backup')")
        restored.commit()
        restored.close()
        os.replace(backup, db_path)
        with pool.connection() as db:
            assert db.execute("SELECT v FROM t").fetchall() == [("from backup",)]
        stats = pool.stats()
        assert stats.replacements_noticed == 1
        assert (stats.open, stats.closed) == (1, 1)


def test_a_deleted_file_is_recreated_and_migrated_again(
    db_path: Path, write_migration: Callable[[str, str], Path], migrations_dir: Path
) -> None:
    """Deleting the database under the pool: the next checkout gets a fresh, migrated file."""
    write_migration("001_t.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
    with ConnectionPool(db_path, migrations=migrations_dir) as pool:
        with pool.connection() as db:
            db.execute("INSERT INTO t (v) VALUES ('old')")
            db.commit()
        os.remove(db_path)
        with pool.connection() as db:
            assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert pool.stats().migration_runs == 2
    assert db_path.exists()


def test_with_no_connection_open_a_recreated_file_is_migrated_again(
    db_path: Path, write_migration: Callable[[str, str], Path], migrations_dir: Path
) -> None:
    """Once no connection holds the file, its inode may be reused: the pool checks again."""
    write_migration("001_t.sql", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
    with ConnectionPool(db_path, migrations=migrations_dir) as pool:
        with pool.connection() as db:
            db.close()  # the pool now holds no connection to the file
        os.remove(db_path)
        get_db(db_path).close()  # a new, empty database, quite possibly on the same inode
        with pool.connection() as db:
            assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
        stats = pool.stats()
        assert (stats.migration_runs, stats.migrations_applied) == (2, 2)


def test_a_replaced_file_waits_for_busy_old_connections_first(
    db_path: Path, tmp_path: Path
) -> None:
    """While a connection to the old file is busy, nobody opens the new file beside it."""
    with ConnectionPool(db_path, max_size=3, timeout=10) as pool:
        make_table(pool)
        replacement = tmp_path / "replacement.db"
        other = get_db(replacement)
        other.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        other.execute("INSERT INTO t (v) VALUES ('new file')")
        other.commit()
        other.close()
        release = threading.Event()
        holding = threading.Event()

        def old_user() -> None:
            with pool.connection():
                holding.set()
                release.wait(JOIN_TIMEOUT)

        result: list[object] = []

        def new_user() -> None:
            with pool.connection() as db:
                result.append(db.execute("SELECT v FROM t").fetchall())

        holder = start(old_user)
        assert holding.wait(JOIN_TIMEOUT)
        os.replace(replacement, db_path)
        waiter = start(new_user)
        wait_for_waiters(pool)  # blocked until the old file's last connection is closed
        assert result == [], "opened the new file while the old one was still in use"
        release.set()
        join_all([holder, waiter])
        assert result == [[("new file",)]]
        assert pool.stats().open == 1


# -- close and leaks -------------------------------------------------------------------


def test_close_refuses_new_checkouts_and_closes_busy_ones_on_return(db_path: Path) -> None:
    """close(): idle connections close at once, busy ones when they come back."""
    pool = ConnectionPool(db_path, max_size=2)
    with pool.connection() as busy:
        with pool.connection():
            pass
        assert pool.stats().idle == 1
        pool.close()
        assert pool.stats().open == 1
        assert busy.execute("SELECT 1").fetchone() == (1,)  # still usable until returned
    assert pool.stats().open == 0
    with pytest.raises(PoolClosedError, match="closed"), pool.connection():
        pass
    pool.close()  # twice is fine


def test_close_with_a_timeout_waits_for_busy_connections(db_path: Path) -> None:
    """close(timeout=...) returns once the busy connection came back and was closed."""
    pool = ConnectionPool(db_path)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pool.connection():
            holding.set()
            release.wait(JOIN_TIMEOUT)

    holder = start(hold)
    assert holding.wait(JOIN_TIMEOUT)
    closer = start(lambda: pool.close(timeout=JOIN_TIMEOUT))
    wait_for_waiters(pool)
    assert closer.is_alive(), "close() returned while a connection was still busy"
    release.set()
    join_all([holder, closer])
    assert (pool.stats().open, pool.closed) == (0, True)


def test_close_with_a_timeout_gives_up_while_still_busy(db_path: Path) -> None:
    """Past its timeout close() raises PoolTimeoutError; the busy connection closes on return."""
    pool = ConnectionPool(db_path)
    with pool.connection():
        with pytest.raises(PoolTimeoutError, match=r"1 connection.* still in use") as caught:
            pool.close(timeout=0.01)
        assert caught.value.path == pool.path
        assert pool.closed
    assert pool.stats().open == 0


def test_a_leaked_pool_warns(db_path: Path) -> None:
    """A pool garbage-collected with open connections raises a ResourceWarning."""
    pool = ConnectionPool(db_path)
    with pool.connection():
        pass
    # PT031 bent: the warning comes when the pool is finalized, by del or by the collector.
    with pytest.warns(ResourceWarning):  # noqa: PT031
        del pool
        gc.collect()


def test_a_closed_or_unused_pool_does_not_warn(db_path: Path) -> None:
    """No warning for a pool that was closed, or that never opened anything."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unused = ConnectionPool(db_path)
        closed = ConnectionPool(db_path)
        with closed.connection():
            pass
        closed.close()
        del unused, closed
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- fork ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_a_forked_child_never_uses_or_closes_inherited_connections(db_path: Path) -> None:
    """After fork() the child's pool opens its own connection; the parent's file stays intact."""
    with ConnectionPool(db_path) as pool:
        make_table(pool)
        with pool.connection() as db:
            parent_connection = db
            db.execute("INSERT INTO t (v) VALUES ('parent')")
            db.commit()
        deadline = time.monotonic() + 10  # worker threads of earlier tests may still be exiting
        while threading.active_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert threading.active_count() == 1, f"fork() needs one thread: {threading.enumerate()}"
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                with pool.connection() as db:
                    ok = db is not parent_connection and pool.stats().opened == 2
                    db.execute("INSERT INTO t (v) VALUES ('child')")
                    db.commit()
                code = 0 if ok else 2
            finally:
                os.write(write_end, bytes([code]))
                os._exit(code)
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        verdict = os.read(read_end, 1)
        os.close(read_end)
        assert os.waitstatus_to_exitcode(status) == 0, verdict
        with pool.connection() as db:
            assert db is parent_connection
            assert db.execute("SELECT v FROM t ORDER BY id").fetchall() == [
                ("parent",),
                ("child",),
            ]
            assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)


@pytest.mark.slow
def test_stress_random_holds_keep_the_counts_consistent(db_path: Path) -> None:
    """Random hold times, failures and timeouts: afterwards nothing is busy and counts add up."""
    with ConnectionPool(db_path, max_size=2, timeout=0.05) as pool:
        make_table(pool)
        rng = random.Random(7)
        delays = [rng.random() * 0.01 for _ in range(400)]

        def work(offset: int) -> None:
            for delay in delays[offset::8]:
                try:
                    with pool.connection() as db:
                        db.execute("INSERT INTO t (v) VALUES ('x')")
                        time.sleep(delay)
                        if delay < 0.002:
                            raise KeyError("fail this one")
                        db.commit()
                except (KeyError, PoolTimeoutError):
                    pass

        join_all([start(lambda n=n: work(n)) for n in range(8)])
        stats = pool.stats()
        assert stats.busy == 0
        assert stats.open == stats.idle <= 2
        assert stats.opened - stats.closed == stats.open


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("POSIX file semantics")
