"""Async connections: statements on worker threads, transactions, cancellation that cleans up,
context isolation, many users at once, and an event loop that never waits for the database."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuitforge_core.db import (
    ConnectionPool,
    NoDatabaseError,
    PoolRegistry,
    PoolTimeoutError,
    TransactionError,
    current_db_path,
    request_aconnection,
    transaction,
    use_db,
)
from circuitforge_core.db.aio import AsyncConnection, FetchedCursor

# Counts to a billion: minutes of work unless interrupted.
SLOW_QUERY = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
    "SELECT count(*) FROM c"
)
WAIT = 30.0  # bound for every wait on an event; never reached when things work


@pytest.fixture
def pool(db_path: Path) -> Iterator[ConnectionPool]:
    with ConnectionPool(db_path, max_size=2, timeout=10) as pool:
        with pool.connection() as db:
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            db.commit()
        yield pool


def count(pool: ConnectionPool) -> int:
    with pool.connection() as db:
        return int(db.execute("SELECT count(*) FROM notes").fetchone()[0])


async def until(condition: Any) -> None:
    """Await ``condition()`` becoming true, checking every millisecond; fail after WAIT."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.001)


async def wait_for(event: threading.Event) -> None:
    """Await a threading.Event set by a worker thread, without blocking the loop."""
    assert await asyncio.to_thread(event.wait, WAIT), "the event never came"


def signal_when_running(db: sqlite3.Connection, event: threading.Event) -> None:
    """A progress handler that sets ``event`` once the next statement is executing."""

    def progress() -> int:
        event.set()
        return 0

    db.set_progress_handler(progress, 1000)


# -- the API ------------------------------------------------------------------------------


def test_statements_run_and_return_fetched_rows(pool: ConnectionPool) -> None:
    """execute, executemany, fetchone, fetchall: rows arrive fetched, cursors are not left open."""

    async def main() -> None:
        async with pool.aconnection() as db:
            assert isinstance(db, AsyncConnection)
            async with db.transaction():
                inserted = await db.executemany(
                    "INSERT INTO notes (body) VALUES (?)", [("a",), ("b",), ("c",)]
                )
            assert inserted.rowcount == 3
            cursor = await db.execute("SELECT id, body FROM notes ORDER BY id")
            assert isinstance(cursor, FetchedCursor)
            assert cursor.description is not None
            assert cursor.description[1][0] == "body"
            assert cursor.fetchone() == (1, "a")
            assert cursor.fetchall() == [(2, "b"), (3, "c")]
            assert cursor.fetchone() is None
            assert await db.fetchone("SELECT body FROM notes WHERE id = ?", (2,)) == ("b",)
            assert await db.fetchone("SELECT body FROM notes WHERE id = 99") is None
            assert await db.fetchall("SELECT id FROM notes WHERE id > :n", {"n": 1}) == [
                (2,),
                (3,),
            ]
            assert [row async for row in _aiter(await db.execute("SELECT id FROM notes"))] == [
                (1,),
                (2,),
                (3,),
            ]

    asyncio.run(main())
    assert count(pool) == 3
    assert pool.stats().busy == 0


async def _aiter(cursor: FetchedCursor) -> AsyncIterator[Any]:
    for row in cursor:
        yield row


def test_returning_rows_are_complete_before_the_commit(pool: ConnectionPool) -> None:
    """INSERT ... RETURNING inside a transaction: every returned row, and every row committed."""

    async def main() -> list[Any]:
        async with pool.aconnection() as db, db.transaction():
            cursor = await db.execute(
                "INSERT INTO notes (body) VALUES ('x'), ('y'), ('z') RETURNING id"
            )
            return cursor.fetchall()

    assert asyncio.run(main()) == [(1,), (2,), (3,)]
    assert count(pool) == 3


def test_transactions_commit_roll_back_and_nest_as_savepoints(pool: ConnectionPool) -> None:
    """A failing inner block undoes only its own work; a failing outer block undoes all."""

    async def main() -> None:
        async with pool.aconnection() as db:
            async with db.transaction():
                await db.execute("INSERT INTO notes (body) VALUES ('kept')")
                assert db.in_transaction
                with pytest.raises(RuntimeError):
                    async with db.transaction():
                        await db.execute("INSERT INTO notes (body) VALUES ('undone')")
                        raise RuntimeError("inner fails")
            assert not db.in_transaction
            with pytest.raises(RuntimeError):
                async with db.transaction():
                    await db.execute("INSERT INTO notes (body) VALUES ('undone too')")
                    raise RuntimeError("outer fails")
            assert await db.fetchall("SELECT body FROM notes") == [("kept",)]
            with pytest.raises(TransactionError):
                async with db.transaction():
                    await db.commit()

    asyncio.run(main())


def test_run_calls_a_function_with_the_sync_connection_in_one_trip(pool: ConnectionPool) -> None:
    """run(fn, *args, **kwargs): the function gets the connection; its result comes back."""

    def add_notes(db: sqlite3.Connection, bodies: list[str], *, suffix: str) -> int:
        with transaction(db):
            db.executemany("INSERT INTO notes (body) VALUES (?)", [(b + suffix,) for b in bodies])
        return int(db.execute("SELECT count(*) FROM notes").fetchone()[0])

    async def main() -> tuple[int, int]:
        async with pool.aconnection() as db:
            first = await db.run(add_notes, ["a", "b"], suffix="!")
        second = await pool.arun(add_notes, ["c"], suffix="?")
        return first, second

    assert asyncio.run(main()) == (2, 3)
    assert pool.stats().busy == 0


def test_sql_errors_stay_sqlite3_errors_and_the_connection_stays_usable(
    pool: ConnectionPool,
) -> None:
    """A failing statement raises sqlite3's own error, from the worker, with its message."""

    async def main() -> None:
        async with pool.aconnection() as db:
            with pytest.raises(sqlite3.OperationalError, match="no such table: missing"):
                await db.execute("SELECT * FROM missing")
            with pytest.raises(sqlite3.IntegrityError):
                await db.execute("INSERT INTO notes (body) VALUES (NULL)")
            assert await db.fetchone("SELECT 1") == (1,)

    asyncio.run(main())
    assert pool.stats().busy == 0


def test_the_connection_refuses_use_after_its_block(pool: ConnectionPool) -> None:
    """A connection kept past its async with raises instead of touching a pooled connection."""

    async def main() -> AsyncConnection:
        async with pool.aconnection() as db:
            pass
        with pytest.raises(sqlite3.ProgrammingError, match="went back to its pool"):
            await db.execute("SELECT 1")
        return db

    asyncio.run(main())


def test_a_block_left_with_an_open_transaction_is_rolled_back(pool: ConnectionPool) -> None:
    """An implicit transaction the block never committed is rolled back at check-in."""

    async def main() -> None:
        async with pool.aconnection() as db:
            await db.execute("INSERT INTO notes (body) VALUES ('never committed')")
            assert db.in_transaction

    asyncio.run(main())
    assert count(pool) == 0
    assert pool.stats().rollbacks_on_return == 1


def test_no_loop_no_async_connection(pool: ConnectionPool) -> None:
    """Outside a running loop the checkout says which loops work."""
    checkout = pool.aconnection()
    with pytest.raises(RuntimeError, match="asyncio or trio"):
        checkout.__aenter__().send(None)


# -- cancellation --------------------------------------------------------------------------


def test_a_cancelled_statement_is_interrupted_rolled_back_and_the_connection_returned(
    pool: ConnectionPool,
) -> None:
    """Cancel mid-statement: the query stops, the transaction rolls back, the connection is
    back and answers the next query on the same connection at once."""
    running = threading.Event()

    async def slow_request() -> None:
        async with pool.aconnection() as db, db.transaction():
            await db.execute("INSERT INTO notes (body) VALUES ('rolled back')")
            await db.run(signal_when_running, running)
            await db.execute(SLOW_QUERY)

    async def main() -> float:
        task = asyncio.create_task(slow_request())
        await wait_for(running)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().busy == 0
        async with pool.aconnection() as db:
            await db.run(lambda c: c.set_progress_handler(None, 0))
            assert not db.in_transaction
            assert await db.fetchone("SELECT count(*) FROM notes") == (0,)
        return time.monotonic() - cancelled_at

    took = asyncio.run(main())
    assert took < 5.0  # the query alone would run for minutes
    stats = pool.stats()
    assert (stats.opened, stats.busy, stats.closed) == (1, 0, 0)  # the same, healthy connection


def test_a_cancelled_one_trip_unit_is_interrupted_and_checked_in(pool: ConnectionPool) -> None:
    """run_checked_out cancelled inside its function: interrupted, checked in, nothing kept."""
    running = threading.Event()

    def unit(db: sqlite3.Connection) -> None:
        with transaction(db):
            db.execute("INSERT INTO notes (body) VALUES ('rolled back')")
            signal_when_running(db, running)
            db.execute(SLOW_QUERY)

    async def main() -> None:
        task = asyncio.create_task(pool.arun(unit))
        await wait_for(running)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().busy == 0
        assert pool.async_workers.in_use == 0

    asyncio.run(main())
    with pool.connection() as db:
        db.set_progress_handler(None, 0)
    assert count(pool) == 0


def test_a_timeout_around_a_slow_query_interrupts_it(pool: ConnectionPool) -> None:
    """asyncio.timeout() cancels the statement like any cancellation; the error is TimeoutError."""

    async def main() -> None:
        async with pool.aconnection() as db:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await db.execute(SLOW_QUERY)
            assert await db.fetchone("SELECT 1") == (1,)

    asyncio.run(main())
    assert pool.stats().busy == 0


def test_cancelled_while_waiting_for_a_connection_leaves_nothing_checked_out(
    pool: ConnectionPool,
) -> None:
    """A coroutine cancelled in the queue for an exhausted pool leaves; nothing leaks."""

    async def main() -> None:
        held = asyncio.Event()
        holders_in = asyncio.Event()
        inside = 0

        async def holder() -> None:
            nonlocal inside
            async with pool.aconnection() as db:
                await db.fetchone("SELECT 1")
                inside += 1
                if inside == 2:
                    holders_in.set()
                await held.wait()

        holders = [asyncio.create_task(holder()) for _ in range(2)]
        await holders_in.wait()
        waiters = [asyncio.create_task(_checkout_once(pool)) for _ in range(5)]
        await until(lambda: pool.async_workers.waiting >= 5)
        for task in waiters:
            task.cancel()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert pool.async_workers.waiting == 0
        held.set()
        await asyncio.gather(*holders)
        assert pool.async_workers.in_use == 0
        assert await _checkout_once(pool) == (1,)

    asyncio.run(main())
    assert pool.stats().busy == 0


async def _checkout_once(pool: ConnectionPool) -> Any:
    async with pool.aconnection() as db:
        return await db.fetchone("SELECT 1")


def test_an_exhausted_pool_times_out_with_pool_timeout_error(db_path: Path) -> None:
    """Past the pool's timeout the waiter gets PoolTimeoutError (also a TimeoutError)."""
    with ConnectionPool(db_path, max_size=1, timeout=0.2) as pool:

        async def main() -> None:
            async with pool.aconnection():
                with pytest.raises(PoolTimeoutError) as caught:
                    await _checkout_once(pool)
            assert isinstance(caught.value, TimeoutError)
            assert caught.value.limit == 1
            assert "connections" in str(caught.value)

        asyncio.run(main())


# -- context and many users ----------------------------------------------------------------


def test_each_task_keeps_its_own_request_database(tmp_path: Path) -> None:
    """Tasks in different use_db contexts check out their own file, and code run in the
    worker sees the task's current_db_path."""
    with PoolRegistry(max_connections=8) as registry:

        async def request(user: str) -> tuple[str, str, str]:
            with use_db(tmp_path / f"{user}.db"):
                await asyncio.sleep(0)
                async with request_aconnection(registry) as db:
                    seen_in_worker = await db.run(lambda _db: current_db_path())
                    await asyncio.sleep(0)
                    return user, db.path, seen_in_worker

        async def main() -> list[tuple[str, str, str]]:
            return await asyncio.gather(*(request(f"user{n % 7}") for n in range(70)))

        for user, path, seen in asyncio.run(main()):
            assert path == seen == str(tmp_path / f"{user}.db")

        async def outside() -> None:
            with pytest.raises(NoDatabaseError):
                request_aconnection(registry)

        asyncio.run(outside())


@pytest.mark.slow
def test_many_users_at_once_each_write_only_their_own_file(tmp_path: Path) -> None:
    """40 users x 15 requests, all at once through one registry with a small cap."""
    users = [f"user{n}" for n in range(40)]
    with PoolRegistry(max_connections=16, max_per_database=2, timeout=30) as registry:

        async def request(user: str, number: int) -> None:
            async with registry.aconnection(tmp_path / f"{user}.db") as db:
                async with db.transaction():
                    await db.execute("CREATE TABLE IF NOT EXISTS hits (user TEXT, n INTEGER)")
                    await db.execute("INSERT INTO hits VALUES (?, ?)", (user, number))
                await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(*(request(u, n) for n in range(15) for u in users))

        asyncio.run(main())
        for user in users:
            with registry.connection(tmp_path / f"{user}.db") as db:
                rows = db.execute("SELECT user, n FROM hits ORDER BY n").fetchall()
            assert rows == [(user, n) for n in range(15)]
        assert registry.stats().busy == 0
        assert registry.async_workers.in_use == 0
        assert registry.async_workers.threads <= 16


def test_two_tasks_sharing_one_connection_take_turns(pool: ConnectionPool) -> None:
    """Statements of tasks sharing an AsyncConnection never run at once on it."""

    async def main() -> None:
        async with pool.aconnection() as db:

            async def insert(n: int) -> None:
                await db.execute("INSERT INTO notes (body) VALUES (?)", (str(n),))

            await asyncio.gather(*(insert(n) for n in range(50)))
            await db.commit()

    asyncio.run(main())
    assert count(pool) == 50


def test_several_event_loops_share_one_pool(pool: ConnectionPool) -> None:
    """Loops in different threads use the same pool and workers; every checkout comes back."""
    errors: list[BaseException] = []

    def loop_thread(n: int) -> None:
        async def main() -> None:
            for i in range(20):
                async with pool.aconnection() as db, db.transaction():
                    await db.execute("INSERT INTO notes (body) VALUES (?)", (f"{n}-{i}",))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert count(pool) == 80


def test_it_runs_under_trio(pool: ConnectionPool) -> None:
    """The same API on trio: statements, a transaction, and a cancel scope that interrupts."""
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with pool.aconnection() as db:
            async with db.transaction():
                await db.execute("INSERT INTO notes (body) VALUES ('from trio')")
            with trio.move_on_after(0.2) as scope:
                await db.execute(SLOW_QUERY)
            assert scope.cancelled_caught
            assert await db.fetchone("SELECT body FROM notes") == ("from trio",)
        assert await pool.arun(lambda c: c.execute("SELECT 2").fetchone()) == (2,)

    trio.run(main)
    assert pool.stats().busy == 0


# -- the loop never waits --------------------------------------------------------------------


class Heartbeat:
    """A task that sleeps 1 ms at a time and records how late each wake-up was."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lateness.append(time.perf_counter() - before - 0.001)

    def __enter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def worst(self) -> float:
        return max(self.lateness, default=0.0)


HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@pytest.fixture
def lock_holder_of() -> Any:
    """``with lock_holder_of(path) as holder:`` another process holds path's write lock until
    told to go (a line on its stdin) or the block ends."""
    return _hold_lock


@contextlib.contextmanager
def _hold_lock(path: str) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "locked\n"
            yield holder
        finally:
            if holder.poll() is None:
                holder.kill()
            holder.wait(WAIT)


@pytest.fixture
def lock_holder(pool: ConnectionPool) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the write lock of the pool's file until told to stop."""
    with _hold_lock(pool.path) as holder:
        yield holder


def test_waiting_for_another_processes_write_lock_never_blocks_the_loop(
    pool: ConnectionPool, lock_holder: subprocess.Popen[str]
) -> None:
    """Writers waiting on a lock held by another process: the heartbeat keeps beating, and
    the writes land once the lock is released."""

    async def write(n: int) -> None:
        async with pool.aconnection() as db, db.transaction():
            await db.execute("INSERT INTO notes (body) VALUES (?)", (str(n),))

    async def main() -> Heartbeat:
        with Heartbeat() as heartbeat:
            writers = [asyncio.create_task(write(n)) for n in range(2)]
            beats_before = len(heartbeat.lateness)
            while len(heartbeat.lateness) < beats_before + 200:  # >= 0.2 s of waiting
                await asyncio.sleep(0.01)
            assert not any(task.done() for task in writers)
            assert lock_holder.stdin is not None
            lock_holder.stdin.write("go\n")
            lock_holder.stdin.flush()
            await asyncio.gather(*writers)
        return heartbeat

    heartbeat = asyncio.run(main())
    assert heartbeat.worst < 0.15  # blocking the loop would stall it for the whole wait
    assert count(pool) == 2


def test_work_in_the_worker_sees_a_copy_of_the_task_context(pool: ConnectionPool) -> None:
    """Work in the worker runs in a copy of the task's context, as Starlette's threadpool does."""
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    async def main() -> tuple[str, str]:
        marker.set("task")
        async with pool.aconnection() as db:
            seen = await db.run(lambda _db: marker.get())
            await db.run(lambda _db: marker.set("worker"))
        return seen, marker.get()

    assert asyncio.run(main()) == ("task", "task")


# -- pipelined checkout and BEGIN ---------------------------------------------------------------


def test_a_failed_checkout_is_raised_by_the_first_statement(db_path: Path) -> None:
    """The checkout runs ahead of the first statement: its PoolTimeoutError comes from there,
    every later call raises it too, and the block still ends cleanly."""
    with ConnectionPool(db_path, max_size=1, timeout=0.2) as pool:

        async def starved() -> None:
            async with pool.aconnection() as db:
                with pytest.raises(PoolTimeoutError):
                    await db.fetchone("SELECT 1")
                with pytest.raises(PoolTimeoutError):
                    await db.execute("SELECT 1")
            assert pool.async_workers.in_use == 0

        with pool.connection():  # a sync thread holds the only connection
            asyncio.run(starved())
        assert asyncio.run(_checkout_once(pool)) == (1,)


def test_a_block_that_runs_nothing_returns_its_connection(pool: ConnectionPool) -> None:
    """async with and nothing inside: no error, and the connection is back right after."""

    async def main() -> None:
        for _ in range(20):
            async with pool.aconnection():
                pass
        assert pool.async_workers.in_use == 0

    asyncio.run(main())
    assert pool.stats().busy == 0


def test_a_begin_that_cannot_get_the_lock_is_raised_by_the_next_statement(
    db_path: Path, lock_holder_of: Any
) -> None:
    """Another process holds the write lock past the busy timeout: the pipelined BEGIN's
    'database is locked' comes from the block's first statement (or its end when empty);
    nothing stays open, and the connection works once the lock is free."""
    with ConnectionPool(db_path, max_size=1, connect_kwargs={"busy_timeout": 0.2}) as pool:
        with pool.connection() as db:
            db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            db.commit()

        async def main() -> None:
            async with pool.aconnection() as db:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    async with db.transaction():
                        await db.execute("INSERT INTO notes (body) VALUES ('x')")
                assert not db.in_transaction
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    async with db.transaction():
                        pass
                assert not db.in_transaction
                assert await db.fetchone("SELECT count(*) FROM notes") == (0,)

        with lock_holder_of(pool.path):
            asyncio.run(main())

        async def after() -> None:
            async with pool.aconnection() as db, db.transaction():
                await db.execute("INSERT INTO notes (body) VALUES ('now')")

        asyncio.run(after())
        assert count(pool) == 1


def test_async_writers_queue_for_the_writer_lock_in_the_loop(pool: ConnectionPool) -> None:
    """While a thread of this process writes, an async writer waits in the lock's queue
    without a worker thread, leaves it at once when cancelled, and times out like a thread."""
    holding = threading.Event()
    release = threading.Event()

    def sync_writer() -> None:
        with pool.connection() as db, transaction(db):
            db.execute("INSERT INTO notes (body) VALUES ('sync')")
            holding.set()
            release.wait(WAIT)

    thread = threading.Thread(target=sync_writer)
    thread.start()
    try:
        assert holding.wait(WAIT)
        lock = _writer_lock_of(pool)

        async def write() -> None:
            async with pool.aconnection() as db, db.transaction():
                await db.execute("INSERT INTO notes (body) VALUES ('async')")

        async def main() -> None:
            task = asyncio.create_task(write())
            await until(lambda: lock.waiting > 0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert lock.waiting == 0
            release.set()
            await write()

        asyncio.run(main())
    finally:
        release.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert count(pool) == 2


def test_an_async_writer_times_out_on_the_writer_lock_like_a_thread(db_path: Path) -> None:
    """Past the busy timeout, the in-process lock wait fails with 'database is locked'."""
    with ConnectionPool(db_path, max_size=2, connect_kwargs={"busy_timeout": 0.2}) as pool:
        with pool.connection() as holder, transaction(holder):

            async def main() -> None:
                async with pool.aconnection() as db:
                    with pytest.raises(sqlite3.OperationalError, match="other threads"):
                        async with db.transaction():
                            pass
                    assert not db.in_transaction

            asyncio.run(main())
        assert _writer_lock_of(pool).waiting == 0


def _writer_lock_of(pool: ConnectionPool) -> Any:
    from circuitforge_core.db.transaction import writer_lock_for

    with pool.connection() as db:
        lock = writer_lock_for(db)
    assert lock is not None
    return lock


def test_a_crowd_for_one_full_file_waits_in_the_loop_and_others_go_first(
    tmp_path: Path,
) -> None:
    """30 requests hold connections to one file across an await, 2 allowed per file: 28 wait
    for a slot in the loop (not in threads), and another user's request is not held up."""
    crowded, other = str(tmp_path / "crowded.db"), str(tmp_path / "other.db")
    with PoolRegistry(max_connections=16, max_per_database=2, timeout=30) as registry:

        async def main() -> None:
            let_go = asyncio.Event()

            async def hold() -> None:
                async with registry.aconnection(crowded) as db:
                    await db.fetchone("SELECT 1")
                    await let_go.wait()

            holders = [asyncio.create_task(hold()) for _ in range(30)]
            await until(lambda: registry.async_workers.waiting >= 28)
            assert registry.async_workers.in_use == 2
            async with registry.aconnection(other) as db:  # not queued behind the crowd
                assert await db.fetchone("SELECT 1") == (1,)
            let_go.set()
            await asyncio.gather(*holders)
            assert registry.async_workers.in_use == 0

        asyncio.run(main())
        assert registry.stats().busy == 0


def test_threads_and_coroutines_queue_for_the_writer_lock_in_arrival_order(
    db_path: Path,
) -> None:
    """A thread holds the lock; a coroutine queues, then another thread: the coroutine
    writes first, the thread after it (one queue for both)."""
    pool = ConnectionPool(db_path, max_size=4, timeout=WAIT)
    with pool.connection() as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        db.commit()
    holding, release = threading.Event(), threading.Event()
    lock = _writer_lock_of(pool)

    def write(body: str, *, hold: bool = False) -> None:
        with pool.connection() as db, transaction(db):
            db.execute("INSERT INTO notes (body) VALUES (?)", (body,))
            if hold:
                holding.set()
                release.wait(WAIT)

    holder = threading.Thread(target=write, args=("holder",), kwargs={"hold": True})
    holder.start()
    later = threading.Thread(target=write, args=("thread",))
    try:
        assert holding.wait(WAIT)

        async def main() -> None:
            async def write_async() -> None:
                async with pool.aconnection() as db, db.transaction():
                    await db.execute("INSERT INTO notes (body) VALUES ('coroutine')")

            task = asyncio.create_task(write_async())
            await until(lambda: lock.waiting >= 1)
            later.start()
            await until(lambda: lock.waiting >= 2)
            await asyncio.sleep(0.01)  # both have waited past the hand-off threshold
            release.set()
            await task

        asyncio.run(main())
    finally:
        release.set()
        holder.join(WAIT)
        if later.ident is not None:
            later.join(WAIT)
    assert not holder.is_alive()
    assert not later.is_alive()
    with pool, pool.connection() as db:
        bodies = [row[0] for row in db.execute("SELECT body FROM notes ORDER BY id")]
    assert bodies == ["holder", "coroutine", "thread"]


def test_trio_tasks_take_turns_on_the_writer_lock(pool: ConnectionPool) -> None:
    """Under trio: 10 tasks each read-modify-write one counter in a transaction, holding it
    across a checkpoint; no update is lost and nothing stays checked out."""
    trio = pytest.importorskip("trio")
    with pool.connection() as db:
        db.execute("CREATE TABLE counter (n INTEGER)")
        db.execute("INSERT INTO counter VALUES (0)")
        db.commit()

    async def bump() -> None:
        async with pool.aconnection() as db, db.transaction():
            (n,) = await db.fetchone("SELECT n FROM counter")
            await trio.sleep(0.001)
            await db.execute("UPDATE counter SET n = ?", (n + 1,))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(bump)

    trio.run(main)
    with pool.connection() as db:
        assert db.execute("SELECT n FROM counter").fetchone() == (10,)
    assert pool.stats().busy == 0
    assert pool.async_workers.in_use == 0
