"""Async connections: pooled connections for ``async def`` code that never block the loop.

Owns how a coroutine uses a pooled connection: the checkout, every statement
and ``transaction()`` block, and the check-in run on worker threads while
the coroutine only awaits, so waiting for a free connection, for another
process's write lock or for a slow statement costs the event loop nothing.
Owns the capacity limit and the threads (``AsyncWorkers``), cancellation (a
cancelled statement is interrupted with ``Connection.interrupt()``, then the
connection is rolled back and checked in, shielded from further
cancellation), the async wait for a file's in-process writer lock, and
``FetchedCursor``, the rows of a statement fetched on the worker.

Does not own pooling (the pool and the registry hand this module a function
that returns their sync checkout), transactions (transaction.py), the writer
lock (writer_lock.py), nor which database a request uses (tenancy.py). Needs
no dependency: it runs on asyncio, and on trio when trio is the running loop
(anyio runs on one of the two, so FastAPI under either works).

Threads of its own, not ``anyio.to_thread``: database waits must never hold
one of the 40 tokens of the threadpool Starlette runs sync endpoints on. Not
a thread per checkout either: a checkout's jobs run one at a time, in order
(its lane), on whichever worker is free. SQLite connections may move between
threads as long as two never use one at once, and ``transaction()``'s writer
lock is not owned by a thread; while a thread per checkout means as many
threads as requests in flight, and on a small machine those only contend for
the GIL (bench/aio.py: a few hot threads serve 3 to 5 times the requests of
a thread per request). Threads are daemons, started as work needs them up
to the limit, and end after ``IDLE_SECONDS`` without work.

Lock order: a lane's lock and an ``AsyncWorkers`` lock are leaves; nothing
else is taken under them. The writer lock is taken after the checkout,
never before, as the sync API does.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import os
import sqlite3
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

from .connect import Connection
from .errors import PoolTimeoutError
from .transaction import busy_timeout_of, locked_by_this_process, transaction, writer_lock_for
from .writer_lock import WriterLock

__all__ = [
    "AsyncCheckout",
    "AsyncConnection",
    "AsyncTransaction",
    "AsyncWorkers",
    "FetchedCursor",
    "run_checked_out",
    "to_worker",
]

T = TypeVar("T")

#: A worker thread with nothing to do for this long ends; the next checkout makes a new one.
IDLE_SECONDS = 10.0

Checkout = Callable[[], AbstractContextManager[Connection]]


# -- the running loop: asyncio or trio -----------------------------------------------------


class _Waiter:
    """One wait of a coroutine for a worker thread: the thread marks it done, then wakes it."""

    __slots__ = ("done", "future", "loop")

    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.done = False
        self.future: Any = loop.new_future()


class _Loop:
    """What this module needs of the running event loop; one subclass per library."""

    cancelled: type[BaseException]

    def new_future(self) -> Any:
        raise NotImplementedError

    def wake(self, waiter: _Waiter) -> None:
        """Called from a worker thread, after ``waiter.done`` was set."""
        raise NotImplementedError

    async def wait(self, waiter: _Waiter, timeout: float | None = None) -> None:
        """Until ``waiter`` is done (or ``timeout`` passed); cancellable."""
        raise NotImplementedError

    async def wait_shielded(self, waiter: _Waiter) -> bool:
        """Until ``waiter`` is done, whatever cancellations arrive; True if one arrived."""
        raise NotImplementedError

    def rearm(self, waiter: _Waiter) -> None:
        """In the loop's thread: make ``waiter`` wait for its next wake-up."""
        waiter.done = False
        waiter.future = self.new_future()


class _AsyncioLoop(_Loop):
    cancelled = asyncio.CancelledError

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def new_future(self) -> Any:
        return self.loop.create_future()

    def wake(self, waiter: _Waiter) -> None:
        self.loop.call_soon_threadsafe(_resolve, waiter)

    async def wait(self, waiter: _Waiter, timeout: float | None = None) -> None:
        if timeout is None:
            await waiter.future
            return
        timer = self.loop.call_later(timeout, _resolve_future, waiter.future)
        try:
            await waiter.future
        finally:
            timer.cancel()

    async def wait_shielded(self, waiter: _Waiter) -> bool:
        interrupted = False
        while not waiter.done:
            # A cancellation cancels the future awaited; the thread resolves
            # whichever future is current when it wakes us (both in this thread).
            if waiter.future.done():
                waiter.future = self.new_future()
            try:
                await waiter.future
            except asyncio.CancelledError:
                interrupted = True
        return interrupted


def _resolve(waiter: _Waiter) -> None:
    _resolve_future(waiter.future)


def _resolve_future(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _TrioLoop(_Loop):
    def __init__(self, trio: Any) -> None:
        self.trio = trio
        self.token = trio.lowlevel.current_trio_token()
        self.cancelled = trio.Cancelled

    def new_future(self) -> Any:
        return self.trio.Event()

    def wake(self, waiter: _Waiter) -> None:
        self.token.run_sync_soon(_set_event, waiter)

    async def wait(self, waiter: _Waiter, timeout: float | None = None) -> None:
        if timeout is None:
            await waiter.future.wait()
            return
        with self.trio.move_on_after(timeout):
            await waiter.future.wait()

    async def wait_shielded(self, waiter: _Waiter) -> bool:
        with self.trio.CancelScope(shield=True):
            await waiter.future.wait()
        return False  # trio delivers the cancellation again at the next checkpoint


def _set_event(waiter: _Waiter) -> None:
    waiter.future.set()  # the event current when this runs, in trio's thread


def _running_loop() -> _Loop:
    """The loop this coroutine runs on, or a RuntimeError saying which loops work."""
    try:
        return _AsyncioLoop(asyncio.get_running_loop())
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")  # imported only by a program that runs trio
    if trio is not None:
        try:
            return _TrioLoop(trio)
        except RuntimeError:
            pass
    raise RuntimeError(
        "async connections need a running asyncio or trio event loop (anyio runs on either); "
        "call them from a coroutine, or use the sync connection() instead."
    )


def _wake_quietly(waiter: _Waiter) -> bool:
    """Wake ``waiter``'s coroutine; False when its loop has ended (nobody will ever read it)."""
    try:
        waiter.loop.wake(waiter)
    except Exception:  # asyncio: "Event loop is closed"; trio: RunFinishedError
        return False
    return True


# -- worker threads and their limit ---------------------------------------------------------

#: Threads started at once for queued work; more only while these are stuck.
EAGER_THREADS = max(2, min(4, os.cpu_count() or 2))
#: A job running longer than this counts as stuck in a wait (for a lock, a
#: connection, a slow statement), and queued work gets more threads, up to the
#: limit. Well above the GIL's switch interval (5 ms), so that waiting for the
#: GIL on a busy machine does not count as stuck.
STUCK_AFTER = 0.02


class _Job:
    """One call for a worker thread, run in the coroutine's context; ``run`` returns the next.

    A job with a ``waiter`` is awaited; one without is pipelined (the checkout,
    a BEGIN): nobody waits for it, and if it fails the lane keeps its error
    for the next awaited job to raise instead of running. ``always`` jobs (the
    check-in) run whatever failed before them.
    """

    __slots__ = (
        "always",
        "args",
        "context",
        "error",
        "function",
        "lane",
        "result",
        "skip",
        "waiter",
    )

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        context: contextvars.Context,
        waiter: _Waiter | None,
        lane: _Lane | None = None,
        *,
        always: bool = False,
    ) -> None:
        self.function = function
        self.args = args
        self.context = context
        self.waiter = waiter
        self.lane = lane
        self.always = always
        self.skip = False  # set by a cancelled coroutine; checked when the job starts
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> _Job | None:
        lane = self.lane
        earlier = lane.failure if lane is not None and not self.always else None
        if self.skip:
            self.error = _Skipped()
        elif earlier is not None:
            if self.waiter is not None:  # report the pipelined job's error here, once
                assert lane is not None
                lane.failure = None
                self.error = earlier
            else:
                self.error = _Skipped()
        else:
            try:
                self.result = self.context.run(self.function, *self.args)
            except BaseException as exc:
                self.error = exc
                if self.waiter is None and lane is not None:
                    lane.failure = exc
        waiter = self.waiter
        if waiter is not None:
            waiter.done = True
            _wake_quietly(waiter)
        return lane.next() if lane is not None else None

    def outcome(self) -> Any:
        error, self.error = self.error, None  # drop the traceback's reference cycle with us
        if error is not None:
            raise error
        return self.result


class _Skipped(Exception):
    """A job that did not run: its coroutine was cancelled, or a job before it failed."""


class _Lane:
    """The jobs of one checkout, one at a time in submission order, on whichever thread is free.

    Any worker thread may run a checkout's next job (SQLite connections may
    move between threads, never be used by two at once); the lane is what
    keeps two tasks sharing one ``AsyncConnection`` from using it at once, and
    lets a job be submitted without waiting for the one before it.
    """

    __slots__ = ("_backlog", "_busy", "_lock", "failure")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._backlog: collections.deque[_Job] = collections.deque()
        self.failure: BaseException | None = None  # a pipelined job's, not reported yet

    def submit(self, job: _Job, workers: AsyncWorkers) -> None:
        with self._lock:
            if self._busy:
                self._backlog.append(job)
                return
            self._busy = True
        workers._submit(job)

    def next(self) -> _Job | None:
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            self._busy = False
            return None


class _Thread:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = 0.0  # when its current job started (read unlocked by the watcher)


class _SlotWaiter(_Waiter):
    __slots__ = ("key",)

    def __init__(self, loop: _Loop, key: str | None) -> None:
        super().__init__(loop)
        self.key = key


class AsyncWorkers:
    """The async side of one pool or registry: its capacity limit and its worker threads.

    At most ``limit`` checkouts are in flight (the pool's or registry's cap on
    connections), and at most ``per_key_limit`` for one key (a registry's
    connections per file; the key is the file): a coroutine asking for one
    more waits in the loop, in arrival order, up to ``timeout`` seconds, then
    gets ``PoolTimeoutError``. So a crowd of requests for one full pool waits
    without holding threads, and the checkouts that run find a connection.
    Statements run on worker threads of this object's own, never the web
    framework's threadpool, so database waits cannot starve sync endpoints
    of its tokens. Few threads run at once (``EAGER_THREADS``; on a small
    machine more threads only contend for the GIL), and more are started
    while the running ones are all stuck longer than ``STUCK_AFTER`` in a
    wait (another process's write lock, a slow statement), up to ``limit``;
    threads idle for ``IDLE_SECONDS`` end. Several event loops may share one
    ``AsyncWorkers``.
    """

    def __init__(
        self,
        limit: int,
        *,
        timeout: float,
        describe: str,
        path: str | None = None,
        per_key_limit: int | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if per_key_limit is not None and per_key_limit < 1:
            raise ValueError(f"per_key_limit must be at least 1, not {per_key_limit}")
        self.limit = limit
        self.per_key_limit = per_key_limit
        self.timeout = timeout
        self.describe = describe
        self.path = path
        self._new_state()
        _live_workers.add(self)

    def _new_state(self) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # idle threads wait here for jobs
        self._watch = threading.Condition(self._lock)  # the watcher parks here
        self._queue: collections.deque[_Job] = collections.deque()
        self._threads: set[_Thread] = set()
        self._running: set[_Thread] = set()
        self._idle = 0
        self._watcher = False
        self._watcher_parked = False
        self._in_use = 0
        self._in_use_by_key: dict[str, int] = {}
        self._slot_waiters: collections.deque[_SlotWaiter] = collections.deque()

    # -- introspection -------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """Worker threads alive now."""
        return len(self._threads)

    @property
    def in_use(self) -> int:
        """Checkouts in flight now (each holds, or is about to hold, a connection)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Coroutines waiting for a checkout slot now."""
        return len(self._slot_waiters)

    def __repr__(self) -> str:
        return (
            f"<AsyncWorkers {self.describe}: {self._in_use}/{self.limit} in use, "
            f"{len(self._threads)} threads>"
        )

    # -- slots: checkouts in flight ------------------------------------------------------

    def _key_full(self, key: str | None) -> bool:
        limit = self.per_key_limit
        return key is not None and limit is not None and self._in_use_by_key.get(key, 0) >= limit

    def _count_in(self, key: str | None) -> None:
        self._in_use += 1
        if key is not None:
            self._in_use_by_key[key] = self._in_use_by_key.get(key, 0) + 1

    def _count_out(self, key: str | None) -> None:
        self._in_use -= 1
        if key is not None:
            left = self._in_use_by_key[key] - 1
            if left:
                self._in_use_by_key[key] = left
            else:
                del self._in_use_by_key[key]

    async def _take_slot(self, loop: _Loop, key: str | None = None) -> None:
        """A slot for one checkout of ``key``; waits in arrival order up to ``timeout``.

        No coroutine that could use a slot is ever left waiting (a release
        hands its slot to the first that can), so a newcomer with room for
        its key may take one at once without jumping that queue.
        """
        with self._lock:
            if self._in_use < self.limit and not self._key_full(key):
                self._count_in(key)
                return
            waiter = _SlotWaiter(loop, key)
            self._slot_waiters.append(waiter)
        started = time.monotonic()
        try:
            await loop.wait(waiter, self.timeout)
        except BaseException:
            if not self._stop_waiting(waiter):  # cancelled just as a slot was handed over
                self._release_slot(key)
            raise
        if self._stop_waiting(waiter):
            raise self._timeout_error(key, time.monotonic() - started)

    def _stop_waiting(self, waiter: _SlotWaiter) -> bool:
        """Leave the queue; False if a slot was handed to ``waiter`` already."""
        with self._lock:
            if waiter.done:
                return False
            self._slot_waiters.remove(waiter)
            return True

    def _release_slot(self, key: str | None = None) -> None:
        """Give the slot back, and hand one to the first waiting coroutine that can use it."""
        with self._lock:
            self._count_out(key)
            self._hand_on()

    def _hand_on(self) -> None:
        """Lock held: hand a free slot to the first waiter with room for its key."""
        if self._in_use >= self.limit:
            return
        for waiter in self._slot_waiters:
            if not self._key_full(waiter.key):
                self._slot_waiters.remove(waiter)
                self._count_in(waiter.key)
                waiter.done = True
                if not _wake_quietly(waiter):  # its loop is gone: the slot goes on
                    self._count_out(waiter.key)
                    self._hand_on()
                return

    def _timeout_error(self, key: str | None, waited: float) -> PoolTimeoutError:
        if self._key_full(key):
            limit, scope = self.per_key_limit or self.limit, key
            what = f"{key}: all {limit} connections to it"
        else:
            limit, scope = self.limit, self.path
            what = f"{self.describe}: all {limit} connections it may open"
        return PoolTimeoutError(
            f"{what} stayed checked out by async code for {waited:.3g} s. Requests hold "
            f"connections too long (a slow query, or a connection kept across a network "
            f"call), or raise the pool's size or timeout.",
            path=scope,
            limit=limit,
            timeout=self.timeout,
        )

    # -- threads ---------------------------------------------------------------------------

    def _submit(self, job: _Job) -> None:
        new: list[_Thread] = []
        start_watcher = False
        with self._lock:
            self._queue.append(job)
            if self._idle:
                self._work.notify()
                return
            if len(self._threads) < min(EAGER_THREADS, self.limit):
                new = self._add_threads(1)
            elif self._watcher_parked:
                self._watch.notify()
            elif not self._watcher:
                self._watcher = start_watcher = True
        self._start(new)
        if start_watcher:
            threading.Thread(
                target=self._watch_for_stuck_threads, name="cf-db-async-watcher", daemon=True
            ).start()

    def _add_threads(self, count: int) -> list[_Thread]:
        """Lock held: count ``count`` more threads in; start them after releasing the lock."""
        new = [_Thread() for _ in range(min(count, self.limit - len(self._threads)))]
        self._threads.update(new)
        return new

    def _start(self, new: list[_Thread]) -> None:
        for state in new:
            thread = threading.Thread(
                target=self._serve, args=(state,), name="cf-db-async", daemon=True
            )
            try:
                thread.start()
            except BaseException:
                with self._lock:
                    self._threads.discard(state)
                raise

    def _serve(self, me: _Thread) -> None:
        lock = self._lock
        lock.acquire()
        try:
            while True:
                if not self._queue:
                    self._idle += 1
                    woken = self._work.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not self._queue:
                        if not woken:
                            self._threads.discard(me)
                            return
                        continue
                job: _Job | None = self._queue.popleft()
                self._running.add(me)
                lock.release()
                try:
                    while job is not None:
                        me.started = time.monotonic()
                        job = job.run()
                finally:
                    lock.acquire()
                    self._running.discard(me)
        finally:
            lock.release()

    def _watch_for_stuck_threads(self) -> None:
        """Start threads for queued work while the running ones are stuck in waits.

        Doubling: when every running thread is stuck, as many new ones as
        there are stuck (bounded by the queue and the limit), so that a burst
        of requests that all wait (for another process's write lock, say) is
        absorbed in a few steps instead of one thread per step.
        """
        with self._lock:
            while True:
                if not self._queue or self._idle:
                    self._watcher_parked = True
                    woken = self._watch.wait(IDLE_SECONDS)
                    self._watcher_parked = False
                    if not woken and not self._queue:
                        self._watcher = False
                        return
                    continue
                self._watch.wait(STUCK_AFTER / 4)
                if not self._queue or self._idle:
                    continue
                now = time.monotonic()
                moving = sum(1 for t in self._running if now - t.started < STUCK_AFTER)
                if moving >= EAGER_THREADS:
                    continue
                stuck = len(self._running) - moving
                wanted = min(max(EAGER_THREADS - moving, stuck), len(self._queue))
                new = self._add_threads(wanted)
                if new:
                    self._lock.release()
                    try:
                        self._start(new)
                    finally:
                        self._lock.acquire()

    def _after_fork_in_child(self) -> None:
        # Threads do not survive fork(): the child starts with none, and no checkouts.
        self._new_state()


_live_workers: weakref.WeakSet[AsyncWorkers] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for workers in list(_live_workers):
        workers._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- rows fetched in the worker -------------------------------------------------------------


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
        pending: _PendingCheckout,
        workers: AsyncWorkers,
        lane: _Lane,
        loop: _Loop,
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
        job = _Job(function, (self._pending, *args), self._context, None, self._lane)
        self._lane.submit(job, self._workers)

    async def _call(
        self, function: Callable[..., Any], *args: Any, interruptible: bool = True
    ) -> Any:
        self._check_usable()
        pending = self._pending
        waiter = _Waiter(self._loop)
        job = _Job(_on_connection, (pending, function, args), self._context, waiter, self._lane)
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
        job = _Job(function, (self._pending, *args), self._context, _Waiter(self._loop), self._lane)
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
    pending: _PendingCheckout, function: Callable[..., Any], args: tuple[Any, ...]
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

    __slots__ = ("block", "lane", "lock", "lock_given")

    def __init__(self, lane: _Lane) -> None:
        self.lane = lane
        self.lock: WriterLock | None = None  # taken by the coroutine, without a thread
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
                    await _take_writer_lock(lock, connection._loop, db)
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


async def _take_writer_lock(lock: WriterLock, loop: _Loop, db: Connection) -> None:
    """Wait for ``lock`` in the loop, up to ``db``'s busy timeout, as transaction() would."""
    waiter = _Waiter(loop)
    ticket = lock.enqueue(functools.partial(_wake_quietly, waiter))
    if ticket is None:
        return
    deadline = ticket.arrived + busy_timeout_of(db)
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            await loop.wait(waiter, remaining)
            if lock.claim(ticket):
                return
            loop.rearm(waiter)
    except BaseException:
        if lock.withdraw(ticket):  # it came to us as we left: pass it on
            lock.release()
        raise
    if not lock.withdraw(ticket):
        raise locked_by_this_process(db)


def _enter_transaction(pending: _PendingCheckout, opened: _OpenTransaction) -> None:
    db = pending.connection()
    opened.lock_given = True  # from here on transaction() releases it, whatever happens
    block = transaction(db, writer_lock_held=opened.lock is not None)
    block.__enter__()
    opened.block = block


def _exit_transaction(
    pending: _PendingCheckout,
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


# -- checking out ----------------------------------------------------------------------------


class AsyncCheckout:
    """``async with ... as db:``: a pooled connection for the block, driven from a coroutine.

    ``checkout`` is the pool's or registry's sync checkout for the file at
    ``path`` (a function returning ``pool.connection()``), run on a worker
    thread like everything else; ``workers`` the pool's or registry's
    ``AsyncWorkers``; ``key`` the file, for a registry's per-file limit.
    Entering waits only for a slot (one per connection the pool may open);
    the checkout itself is pipelined ahead of the first statement. Leaving
    checks the connection in (rolled back if the block left a transaction
    open) and waits for that, shielded from cancellation.
    A checkout still waiting for a connection when the block ends with an
    exception, or when a statement waiting behind it is cancelled, is
    abandoned at once: the worker returns the connection when it gets one.
    """

    __slots__ = ("_checkout", "_connection", "_key", "_path", "_workers")

    def __init__(
        self, checkout: Checkout, workers: AsyncWorkers, *, path: str, key: str | None = None
    ) -> None:
        self._checkout = checkout
        self._workers = workers
        self._path = path
        self._key = key
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> AsyncConnection:
        loop = _running_loop()
        workers = self._workers
        await workers._take_slot(loop, self._key)
        context = contextvars.copy_context()
        lane = _Lane()
        pending = _PendingCheckout(self._checkout, workers, self._path, self._key)
        lane.submit(_Job(pending.enter, (), context, None, lane), workers)
        connection = AsyncConnection(self._path, pending, workers, lane, loop, context)
        self._connection = connection
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("__aexit__ without __aenter__ on an async checkout")
        pending = connection._pending
        pending.closed = True  # refuse further use from now on, even while checking in
        if exc is not None and pending.abandon():
            return  # still waiting for a connection: not worth delaying the error for
        loop = connection._loop
        waiter = _Waiter(loop)
        lane = connection._lane
        job = _Job(pending.exit, (exc,), connection._context, waiter, lane, always=True)
        lane.submit(job, self._workers)
        cancelled = await loop.wait_shielded(waiter)
        job.outcome()
        if cancelled:
            raise loop.cancelled()


class _PendingCheckout:
    """The sync checkout behind one ``async with``, as the worker threads see it.

    ``enter`` runs on a worker, pipelined; ``abandon()`` comes from the
    coroutine (its block ended, or a statement waiting behind the checkout
    was cancelled) and races with it; a lock decides which side returns the
    connection. Whoever ends the checkout frees its slot.
    """

    __slots__ = (
        "_abandoned",
        "_block",
        "_entered",
        "_lock",
        "_open",
        "_workers",
        "closed",
        "db",
        "error",
        "key",
        "path",
    )

    def __init__(
        self, open_block: Checkout, workers: AsyncWorkers, path: str, key: str | None
    ) -> None:
        self._open = open_block
        self._workers = workers
        self.path = path
        self.key = key
        self._lock = threading.Lock()
        self._abandoned = False
        self._entered = False
        self._block: AbstractContextManager[Connection] | None = None
        self.db: Connection | None = None
        self.error: BaseException | None = None
        self.closed = False  # the `async with` ended

    def enter(self) -> None:
        """On a worker: check a connection out (waiting for one if need be)."""
        with self._lock:
            if self._abandoned:
                self._entered = True
                self._workers._release_slot(self.key)
                return
        try:
            block = self._open()
            db = block.__enter__()
        except BaseException as exc:
            self.error = exc  # raised by every statement of the block
            self._finish_entering()
            self._workers._release_slot(self.key)
            return
        self._block = block
        self.db = db
        if self._finish_entering():  # given up meanwhile: nobody else will return it
            self.exit(asyncio.CancelledError())

    def _finish_entering(self) -> bool:
        """True if the coroutine gave up meanwhile."""
        with self._lock:
            self._entered = True
            return self._abandoned

    def abandon(self) -> bool:
        """From the coroutine: True if the checkout had not ended; the worker now returns it."""
        with self._lock:
            if self._entered:
                return False
            self._abandoned = True
            return True

    def connection(self) -> Connection:
        """On a worker: the checked-out connection, or the error that kept it from us."""
        db = self.db
        if db is None:
            if self.error is not None:
                raise self.error
            raise sqlite3.ProgrammingError(f"no connection to {self.path} was checked out")
        return db

    def exit(self, exc: BaseException | None) -> None:
        """On a worker: check the connection in (rolled back, reset), then free the slot."""
        block, self._block = self._block, None
        self.db = None
        if block is None:  # the checkout failed, and freed the slot then
            return
        try:
            block.__exit__(type(exc) if exc is not None else None, exc, None)
        finally:
            self._workers._release_slot(self.key)


# -- one unit of work in one trip -----------------------------------------------------------


async def run_checked_out(
    checkout: Checkout,
    workers: AsyncWorkers,
    function: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None = None,
) -> T:
    """Check out, call ``function(connection, *args, **kwargs)``, check in: one worker trip.

    The fastest way for a coroutine to do one unit of work: a single wake-up
    of a worker thread per request. Cancellation interrupts the statement
    running, and waits for the check-in.
    """
    loop = _running_loop()
    await workers._take_slot(loop, key)
    unit = _UnitOfWork(checkout, workers, key, function, args, kwargs)
    waiter = _Waiter(loop)
    job = _Job(unit.run, (), contextvars.copy_context(), waiter)
    workers._submit(job)
    try:
        await loop.wait(waiter)
    except BaseException:
        if not waiter.done:
            unit.cancel()
            await loop.wait_shielded(waiter)
        raise
    result: T = job.outcome()
    return result


class _UnitOfWork:
    """``run_checked_out``'s job: the connection is published so a cancellation can interrupt it."""

    __slots__ = (
        "_args",
        "_cancelled",
        "_checkout",
        "_db",
        "_function",
        "_key",
        "_kwargs",
        "_workers",
    )

    def __init__(
        self,
        checkout: Checkout,
        workers: AsyncWorkers,
        key: str | None,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._checkout = checkout
        self._workers = workers
        self._key = key
        self._function = function
        self._args = args
        self._kwargs = kwargs
        self._db: Connection | None = None
        self._cancelled = False

    def run(self) -> Any:
        try:
            with self._checkout() as db:
                self._db = db
                if self._cancelled:
                    raise _Skipped()
                try:
                    return self._function(db, *self._args, **self._kwargs)
                finally:
                    self._db = None
        finally:
            self._workers._release_slot(self._key)

    def cancel(self) -> None:
        """From the cancelled coroutine (loop thread)."""
        self._cancelled = True
        db = self._db
        if db is not None:
            db.interrupt()


# -- other sync work, off the loop ----------------------------------------------------------

_spare_workers: AsyncWorkers | None = None
_spare_workers_guard = threading.Lock()


async def to_worker(function: Callable[..., T], /, *args: Any) -> T:
    """``function(*args)`` on a worker thread, not holding a connection; the loop waits for it.

    For the sync work around the database that must not block the loop
    either (the start-up check, a migration run at start). Uses a few
    threads of its own, on asyncio or trio; a cancellation waits for the
    function to return (it cannot be interrupted).
    """
    global _spare_workers
    with _spare_workers_guard:
        if _spare_workers is None:
            _spare_workers = AsyncWorkers(4, timeout=float("inf"), describe="spare workers")
        workers = _spare_workers
    loop = _running_loop()
    waiter = _Waiter(loop)
    job = _Job(function, args, contextvars.copy_context(), waiter)
    workers._submit(job)
    cancelled = await loop.wait_shielded(waiter)
    result: T = job.outcome()
    if cancelled:
        raise loop.cancelled()
    return result
