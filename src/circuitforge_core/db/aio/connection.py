"""The async connection: statements, transactions and their cancellation, on worker jobs.

Owns ``AsyncConnection`` (every call one job in the checkout's lane, rows
fetched on the worker as a ``FetchedCursor``, a cancelled statement
interrupted), ``AsyncTransaction`` (the writer lock waited for in the loop
after the checkout, BEGIN pipelined, COMMIT or ROLLBACK shielded). Does not
own the checkout (checkout.py) nor the threads (workers.py).
"""

from __future__ import annotations

import contextvars
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..connect import Connection
from ..transaction import busy_timeout_of, locked_by_this_process, transaction, writer_lock_for
from ..writer_lock import WriterLock
from .loops import Loop, Waiter, wake_quietly
from .workers import AsyncWorkers, Job, Lane

if TYPE_CHECKING:
    from .checkout import PendingCheckout

T = TypeVar("T")


class FetchedCursor:
    """What ``await db.execute(...)`` returns: a cursor whose rows were all fetched already.

    It reads like a ``sqlite3.Cursor`` (``fetchone``, ``fetchmany``,
    ``fetchall``, iteration, ``rowcount``, ``lastrowid``, ``description``),
    but costs no further trip to the worker thread. Because every row is
    fetched before ``execute`` returns, the rows of ``INSERT … RETURNING``
    are always complete before the transaction commits.
    """

    __slots__ = ("_position", "_rows", "description", "lastrowid", "rowcount")

    def __init__(
        self,
        rows: list[Any],
        rowcount: int,
        lastrowid: int | None,
        description: tuple[tuple[Any, ...], ...] | None,
    ) -> None:
        self._rows = rows
        self._position = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid
        self.description = description

    def fetchone(self) -> Any:
        """The next row, or None after the last."""
        if self._position >= len(self._rows):
            return None
        row = self._rows[self._position]
        self._position += 1
        return row

    def fetchmany(self, size: int = 1) -> list[Any]:
        rows = self._rows[self._position : self._position + size]
        self._position += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        """Every row not read yet."""
        rows = self._rows[self._position :] if self._position else self._rows
        self._position = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Any]:
        while (row := self.fetchone()) is not None:
            yield row

    def __len__(self) -> int:
        """Rows not read yet."""
        return len(self._rows) - self._position

    def __repr__(self) -> str:
        return f"<FetchedCursor {len(self)} rows left, rowcount={self.rowcount}>"


def _fetched(cursor: sqlite3.Cursor) -> FetchedCursor:
    try:
        rows = cursor.fetchall()
        return FetchedCursor(rows, cursor.rowcount, cursor.lastrowid, cursor.description)
    finally:
        cursor.close()  # the statement is reset now, not when the pool closes leftovers


def _execute(db: Connection, sql: str, parameters: Any) -> FetchedCursor:
    return _fetched(db.execute(sql, parameters))


def _executemany(db: Connection, sql: str, parameters: Iterable[Any]) -> FetchedCursor:
    return _fetched(db.executemany(sql, parameters))


def _executescript(db: Connection, script: str) -> None:
    db.executescript(script).close()


def _fetchone(db: Connection, sql: str, parameters: Any) -> Any:
    cursor = db.execute(sql, parameters)
    try:
        return cursor.fetchone()
    finally:
        cursor.close()


def _fetchall(db: Connection, sql: str, parameters: Any) -> list[Any]:
    cursor = db.execute(sql, parameters)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


# -- the async connection ------------------------------------------------------------------


class AsyncConnection:
    """A pooled connection, driven from a coroutine.

    Every method runs on a worker thread and is awaited: ``execute`` and
    ``executemany`` return a ``FetchedCursor``; ``fetchone``/``fetchall``
    return rows; ``async with db.transaction():`` is ``transaction()`` (BEGIN
    IMMEDIATE, a savepoint when nested); ``run(fn, *args)`` calls
    ``fn(connection, *args)`` with the sync connection, in one trip, for code
    that issues many statements. Cancelling a coroutine while a statement
    runs interrupts the statement.

    The checkout and a transaction's BEGIN are pipelined: they are queued on
    the worker without a round trip of their own, and their errors (a
    ``PoolTimeoutError``, "database is locked") are raised by the next
    awaited call. Valid only inside its ``async with``; share it between tasks
    only as you would share a sync connection between threads (their
    statements run one at a time, in the order they were awaited, inside
    whatever transaction is open).
    """

    __slots__ = ("_context", "_depth", "_lane", "_loop", "_pending", "_workers", "path")

    def __init__(
        self,
        path: str,
        pending: PendingCheckout,
        workers: AsyncWorkers,
        lane: Lane,
        loop: Loop,
        context: contextvars.Context,
    ) -> None:
        self.path = path
        self._pending = pending
        self._workers = workers
        self._lane = lane
        self._loop = loop
        self._context = context
        self._depth = 0  # async transaction blocks open on it

    # -- statements ----------------------------------------------------------------------

    async def execute(
        self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()
    ) -> FetchedCursor:
        """Run one statement; every row it returns is fetched before this returns."""
        result: FetchedCursor = await self._call(_execute, sql, parameters)
        return result

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> FetchedCursor:
        result: FetchedCursor = await self._call(_executemany, sql, parameters)
        return result

    async def executescript(self, script: str) -> None:
        """``sqlite3``'s executescript: it commits an open transaction first, as there."""
        await self._call(_executescript, script)

    async def fetchone(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Any:
        """The first row of ``sql``, or None."""
        return await self._call(_fetchone, sql, parameters)

    async def fetchall(
        self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()
    ) -> list[Any]:
        rows: list[Any] = await self._call(_fetchall, sql, parameters)
        return rows

    async def run(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``function(connection, *args, **kwargs)`` on the worker thread, in one trip.

        The fast path for a unit of work of several statements: one wake-up
        of the worker instead of one per statement. ``function`` gets the
        sync ``Connection`` and may use ``transaction()`` on it; it must not
        keep the connection after it returns.
        """
        result: T = await self._call(_call_with, function, args, kwargs)
        return result

    def transaction(self) -> AsyncTransaction:
        """``async with db.transaction():``: BEGIN IMMEDIATE, a savepoint when nested."""
        return AsyncTransaction(self)

    async def commit(self) -> None:
        await self._call(_commit, interruptible=False)

    async def rollback(self) -> None:
        await self._call(_rollback, interruptible=False)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open, as of the last awaited call."""
        self._check_usable()
        db = self._pending.db
        return db is not None and db.in_transaction

    # -- the trip to the worker --------------------------------------------------------

    def _check_usable(self) -> None:
        if self._pending.closed:
            raise sqlite3.ProgrammingError(
                f"the async connection to {self.path} went back to its pool when its "
                f"`async with` ended; use it only inside that block."
            )

    def _pipeline(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(pending, *args)`` without waiting for it (see the class docstring)."""
        self._check_usable()
        job = Job(function, (self._pending, *args), self._context, None, self._lane)
        self._lane.submit(job, self._workers)

    async def _call(
        self, function: Callable[..., Any], *args: Any, interruptible: bool = True
    ) -> Any:
        self._check_usable()
        pending = self._pending
        waiter = Waiter(self._loop)
        job = Job(_on_connection, (pending, function, args), self._context, waiter, self._lane)
        self._lane.submit(job, self._workers)
        try:
            await self._loop.wait(waiter)
        except BaseException:
            if not waiter.done:
                job.skip = True  # not started yet: it never will
                if pending.abandon():  # still waiting for its connection: let it go
                    raise
                db = pending.db
                if interruptible and db is not None:
                    db.interrupt()  # thread-safe: a running statement stops with SQLITE_INTERRUPT
                await self._loop.wait_shielded(waiter)
            raise
        return job.outcome()

    async def _run_shielded(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(pending, *args)`` to its end, even when cancelled meanwhile."""
        job = Job(function, (self._pending, *args), self._context, Waiter(self._loop), self._lane)
        self._lane.submit(job, self._workers)
        cancelled = await self._loop.wait_shielded(job.waiter)  # type: ignore[arg-type]
        result = job.outcome()
        if cancelled:
            raise self._loop.cancelled()
        return result

    def __repr__(self) -> str:
        state = "returned" if self._pending.closed else "checked out"
        return f"<AsyncConnection {self.path} ({state})>"


def _on_connection(
    pending: PendingCheckout, function: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    return function(pending.connection(), *args)


def _call_with(
    db: Connection, function: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    return function(db, *args, **kwargs)


def _commit(db: Connection) -> None:
    db.commit()


def _rollback(db: Connection) -> None:
    db.rollback()


class _OpenTransaction:
    """What one ``AsyncTransaction`` opened: the writer lock it waited for, the block."""

    __slots__ = ("block", "lane", "lock", "lock_given", "lock_wait")

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.lock: WriterLock | None = None  # taken by the coroutine, without a thread
        self.lock_wait = 0.0  # how long that took, for transaction()'s metrics
        self.lock_given = False  # handed to transaction(), which releases it
        self.block: AbstractContextManager[Connection] | None = None


class AsyncTransaction:
    """``async with db.transaction():``: ``transaction()`` entered and left on a worker thread.

    The file's in-process writer lock (transaction()'s) is waited for by the
    coroutine, in the same queue as threads, so a queue of writers to one
    file holds no worker threads and a cancelled writer leaves the queue at
    once. It is taken only once the connection is checked out (the lock order
    of the sync API). BEGIN (or SAVEPOINT) is then pipelined ahead of the
    block's first statement; COMMIT or ROLLBACK is awaited when the block
    ends, shielded from cancellation, so that no transaction is left open on
    a connection about to be checked in.
    """

    __slots__ = ("_connection", "_open")

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self._open: _OpenTransaction | None = None

    async def __aenter__(self) -> AsyncConnection:
        connection = self._connection
        connection._check_usable()
        pending = connection._pending
        opened = _OpenTransaction(connection._lane)
        if connection._depth == 0:
            if pending.db is None:
                await connection._call(_noop)  # checked out first (raises what kept it)
            db = pending.db
            if db is not None and not db.in_transaction:
                lock = writer_lock_for(db)
                if lock is not None:
                    opened.lock_wait = await _take_writer_lock(lock, connection._loop, db)
                    opened.lock = lock
        connection._depth += 1
        self._open = opened
        connection._pipeline(_enter_transaction, opened)
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        opened, self._open = self._open, None
        if opened is None:
            raise RuntimeError("__aexit__ without __aenter__ on an async transaction")
        self._connection._depth -= 1
        await self._connection._run_shielded(_exit_transaction, opened, exc_type, exc, traceback)


def _noop(db: Connection) -> None:
    return None


async def _take_writer_lock(lock: WriterLock, loop: Loop, db: Connection) -> float:
    """Wait for ``lock`` in the loop, up to ``db``'s busy timeout, as transaction() would.

    Returns the seconds waited (0 for a free lock, which reads no clock).
    """
    waiter = Waiter(loop)
    ticket = lock.enqueue(functools.partial(wake_quietly, waiter))
    if ticket is None:
        return 0.0
    deadline = ticket.arrived + busy_timeout_of(db)
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            await loop.wait(waiter, remaining)
            if lock.claim(ticket):
                return time.monotonic() - ticket.arrived
            loop.rearm(waiter)
    except BaseException:
        if lock.withdraw(ticket):  # it came to us as we left: pass it on
            lock.release()
        raise
    if not lock.withdraw(ticket):
        raise locked_by_this_process(db)
    return time.monotonic() - ticket.arrived


def _enter_transaction(pending: PendingCheckout, opened: _OpenTransaction) -> None:
    db = pending.connection()
    opened.lock_given = True  # from here on transaction() releases it, whatever happens
    block = transaction(db, writer_lock_wait=opened.lock_wait if opened.lock else None)
    block.__enter__()
    opened.block = block


def _exit_transaction(
    pending: PendingCheckout,
    opened: _OpenTransaction,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    traceback: TracebackType | None,
) -> None:
    """Always runs (even after a failed BEGIN), so that the writer lock is never kept."""
    block, opened.block = opened.block, None
    if block is not None:
        block.__exit__(exc_type, exc, traceback)
    elif opened.lock is not None and not opened.lock_given:
        opened.lock.release()  # BEGIN never ran: the checkout failed, or a job before it
    failure, opened.lane.failure = opened.lane.failure, None
    if failure is not None and exc is None:
        raise failure  # the BEGIN's own error, when no statement of the block reported it
