"""ConnectionPool: reusable connections to one SQLite file.

Owns checkout and check-in for one database file: the size limit and the
wait for a free connection, running a migrations folder once before the first
connection is handed out, noticing a file that was deleted or replaced, and
starting empty in a forked child. Does not own what is done to one connection
(connection.py), the cap across files (budget.py), which file a request uses
(tenancy.py), nor how a connection is opened (connect.get_db).

Lock order: a pool's migration lock, then its budget's lock. Every pool's
condition is built on the budget's lock, so counts across the files of a
group never need two locks at once. Nothing slow runs under it: opening,
migrating, resetting and closing connections all happen outside it.
transaction()'s per-file writer lock is only ever taken by the holder of a
checked-out connection, after the budget lock was released.

Where things happen, one place each (what lifecycle hooks and metrics would
hang on): ``_checkout`` and ``_checkin`` (every checkout starts and ends
there), ``_wait`` (every wait and timeout), ``_first_connection_opened`` and
``_last_connection_closed`` (a file starts and stops being held open),
``_notice_replacement`` (a file replaced or deleted under the pool).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from .. import metrics
from ..aio import AsyncCheckout, AsyncWorkers, run_checked_out
from ..cipher import Key
from ..connect import Connection
from ..errors import PoolClosedError, PoolTimeoutError
from ..migrations import DEFAULT_LOCK_TIMEOUT, MigrationsDir, run_migrations
from .budget import ConnectionBudget, checkouts_ever, live_budgets
from .connection import (
    PooledConnection,
    RowFactory,
    abandon,
    close_quietly,
    close_well,
    generation_of,
    is_broken,
    open_pooled,
    opened_in_this_process,
    reset,
)
from .connection_state import NotReusable

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_POOL_SIZE = 8
DEFAULT_POOL_TIMEOUT = 5.0

_T = TypeVar("_T")

#: A database key (see cipher.py), or a resolver: called with the file's path
#: each time a connection is opened, returning its key (None: a plain file).
KeySource = Key | Callable[[str], Key | None] | None


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counts for one pool since it was made; ``open``/``idle``/``busy``/``waiting`` are current.

    ``waiting``: threads blocked in the pool right now, checkouts waiting for
    a connection and ``close(timeout=...)`` waiting for busy ones to return.
    """

    path: str
    open: int
    idle: int
    busy: int
    waiting: int
    opened: int
    closed: int
    checkouts: int
    waits: int
    timeouts: int
    rollbacks_on_return: int
    replacements_noticed: int
    migration_runs: int
    migrations_applied: int


class ConnectionPool:
    """Connections to one SQLite file, handed out one holder at a time.

    ``with pool.connection() as db:`` checks a connection out (opening one
    with ``get_db(path, **connect_kwargs)`` if none is idle) and takes it back
    reset when the block ends. At most ``max_size`` connections are open; a
    caller waits up to ``timeout`` seconds for one, then gets
    ``PoolTimeoutError``. Given ``migrations``, the folder is applied once,
    before the first connection is handed out, however many threads ask at
    once. A file deleted or replaced since it was opened is noticed at
    checkout: its old connections are closed (busy ones when they come back)
    before the new file is opened and migrated. ``close()`` closes idle
    connections now and busy ones as they come back. ``key`` opens the file
    encrypted (``get_db(key=...)``): a key, or a callable taking the path and
    returning its key, asked again for every new connection. ``budget``
    shares a cap on open connections with other pools (see
    ``ConnectionBudget``); by default the pool has one of its own, of
    ``max_size``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        migrations: MigrationsDir | None = None,
        key: KeySource = None,
        max_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_POOL_TIMEOUT,
        connect_kwargs: Mapping[str, Any] | None = None,
        row_factory: RowFactory = None,
        migration_lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        budget: ConnectionBudget | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        if timeout < 0:
            raise ValueError(f"timeout must not be negative, not {timeout}")
        self.path = os.path.abspath(os.fspath(path))
        self.migrations = migrations
        self.max_size = max_size
        self.timeout = timeout
        self.connect_kwargs = dict(connect_kwargs or {})
        self.row_factory = row_factory
        self.migration_lock_timeout = migration_lock_timeout
        self._key = key
        # A pool on its own warns when leaked; one sharing a budget leaves that to
        # the budget's owner (a registry warns for all its pools at once).
        self._lone = budget is None
        self._budget = budget or ConnectionBudget(max_size, evict_idle=False)
        self._idle: list[PooledConnection] = []  # most recently returned last
        self._open = 0  # open or being opened, busy or idle
        self._busy = 0
        self._waiters = 0  # threads waiting on `_returned`
        self._waiting_for_cap = 0  # threads of this pool waiting for room under the budget's cap
        self._stale = 0  # open connections to a file since replaced, not closed yet
        self._generation = 0  # replacements of the file noticed
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._migrated = migrations is None
        self._closed = False
        self._async: AsyncWorkers | None = None  # made at the first async checkout
        self._counts = dict.fromkeys(
            (
                "opened",
                "closed",
                "checkouts",
                "waits",
                "timeouts",
                "rollbacks_on_return",
                "replacements_noticed",
                "migration_runs",
                "migrations_applied",
            ),
            0,
        )
        self._new_locks()
        _live_pools.add(self)

    def _new_locks(self) -> None:
        self._lock = self._budget.lock
        # Notified when a connection of this pool comes back or is closed.
        self._returned = threading.Condition(self._lock)
        self._migrate_lock = threading.Lock()

    # -- public ----------------------------------------------------------------------

    def connection(self) -> _Checkout:
        """``with pool.connection() as db:``: a connection for the block, returned reset.

        The object returned may be entered and exited on any thread (one
        after the other): an async caller can run both in a worker thread.
        """
        return _Checkout(self)

    def aconnection(self) -> AsyncCheckout:
        """``async with pool.aconnection() as db:``: the async twin of ``connection()``.

        ``db`` is an ``AsyncConnection``: its checkout, statements and check-in
        run on worker threads (aio/), so waiting for a connection, a lock or
        a statement never blocks the event loop. See docs/async.md.
        """
        return AsyncCheckout(self.connection, self.async_workers, path=self.path)

    async def arun(self, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``function(connection, *args, **kwargs)`` on a pooled connection, in one worker trip."""
        return await run_checked_out(self.connection, self.async_workers, function, args, kwargs)

    @property
    def async_workers(self) -> AsyncWorkers:
        """This pool's async capacity limit: one slot per connection it may open."""
        workers = self._async
        if workers is None:
            with self._lock:
                if self._async is None:
                    self._async = AsyncWorkers(
                        self.max_size,
                        timeout=self.timeout,
                        describe=f"the pool of {self.path}",
                        path=self.path,
                    )
                workers = self._async
        return workers

    def close(self, *, timeout: float | None = None) -> None:
        """Close idle connections now, busy ones when they come back; refuse new checkouts.

        With ``timeout``, also wait up to that many seconds until the busy
        ones came back and were closed; past it, ``PoolTimeoutError`` (the
        pool stays closed, and they are closed as they come back).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            idle: list[PooledConnection] = []
            if not self._closed:
                self._closed = True
                idle, self._idle = self._idle, []
                for conn in idle:
                    self._budget.remove_idle(conn)
                self._returned.notify_all()
                if self._waiting_for_cap:  # they must wake up to see the pool closed
                    self._budget.wake_cap_waiters()
        for conn in idle:
            self._close(conn)
        if deadline is not None:
            self._wait_until_all_closed(deadline, timeout or 0.0)

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                path=self.path,
                open=self._open,
                idle=len(self._idle),
                busy=self._busy,
                waiting=self._waiters + self._waiting_for_cap,
                **self._counts,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def open_connections(self) -> int:
        """Connections open (or being opened) right now; exact with the budget's lock held."""
        return self._open

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._open} open, {len(self._idle)} idle"
        return f"<ConnectionPool {self.path} ({state})>"

    def __del__(self) -> None:
        # No locks here: the collector may run while this thread holds the budget's.
        open_count = getattr(self, "_open", 0)  # 0 if __init__ raised
        if not open_count or self._closed:
            return
        close_quietly(self._idle)  # nobody can check these out any more
        if self._lone:
            warnings.warn(
                f"ConnectionPool for {self.path} was garbage-collected with {open_count} open "
                f"connection(s); call close() when done with it (or use it as a context manager).",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    # -- checkout --------------------------------------------------------------------

    def _checkout(self, asked: float) -> PooledConnection:
        """Every checkout starts here: the connection for the caller, or an error.

        ``asked`` is when the caller asked (``time.monotonic()``).
        """
        deadline = asked + self.timeout
        self._notice_replacement()
        if not self._migrated:
            conn = self._migrate(deadline)
            if conn is not None:
                return conn
        return self._acquire(deadline)

    def _notice_replacement(self) -> None:
        """Retire every connection if the file on disk is no longer the one they opened.

        A restore that renames a backup over the live file, or a deletion,
        leaves our connections on the old inode; serving them would return
        stale data, and opening the new file next to them would let both
        share one -wal. So the old ones are closed first (their close
        checkpoints into the old inode and removes its -wal and -shm), and
        only then is the new file opened and migrated.
        """
        identity = _file_identity(self.path)
        if identity == self._identity:
            return
        with self._lock:
            if self._identity is None or identity == self._identity:
                return
            logger.warning(
                "%s was %s since its connections were opened; reopening it",
                self.path,
                "deleted" if identity is None else "replaced",
            )
            self._counts["replacements_noticed"] += 1
            self._generation += 1
            self._identity = None
            self._migrated = self.migrations is None
            self._stale = self._open
            idle, self._idle = self._idle, []
            for conn in idle:
                self._budget.remove_idle(conn)
        for conn in idle:
            self._close(conn, stale=True)

    def _migrate(self, deadline: float) -> PooledConnection | None:
        """Run the migrations folder if no other thread has; return the connection it used.

        That connection goes straight to the caller rather than back to the
        idle list, where another file's checkout could evict it (and, in a
        registry, retire this pool) before the caller got a connection.
        None when another thread had already migrated the file.
        """
        if not self._migrate_lock.acquire(timeout=self.migration_lock_timeout):
            if metrics.enabled:
                metrics.increment(metrics.POOL_TIMEOUTS)
            raise PoolTimeoutError(
                f"{self.path}: waited {self.migration_lock_timeout:g} s for another thread to "
                f"finish migrating it. Look for a migration that hangs, or raise "
                f"migration_lock_timeout.",
                path=self.path,
                limit=1,
                timeout=self.migration_lock_timeout,
            )
        try:
            if self._migrated:
                return None
            assert self.migrations is not None
            conn = self._acquire(deadline)
            generation = generation_of(conn)
            handed_over: PooledConnection | None = conn
            try:
                applied = run_migrations(
                    conn, self.migrations, lock_timeout=self.migration_lock_timeout
                )
                reset(conn, self.row_factory, block_failed=False)
            except NotReusable:  # migrated, but a file left what check-in cannot undo
                self._checkin(conn, None)  # closes it; the caller gets another
                handed_over = None
            except BaseException as exc:
                self._checkin(conn, exc)
                raise
            with self._lock:
                self._counts["migration_runs"] += 1
                self._counts["migrations_applied"] += len(applied)
                self._budget.migration_ran(len(applied))
                # Not if the file was replaced meanwhile: the new one needs its own run.
                self._migrated = generation == self._generation
            if applied:
                logger.info("%s: applied %d migration(s)", self.path, len(applied))
            return handed_over
        finally:
            self._migrate_lock.release()

    def _acquire(self, deadline: float) -> PooledConnection:
        """An idle connection, or a new one once there is room for it."""
        with self._lock:
            conn, evicted = self._claim(deadline)
            generation = self._generation
        if conn is not None:
            return conn
        if evicted is not None:
            close_well(evicted)  # its slot is ours: closed before ours opens, the cap holds
        return self._open_new(generation)

    def _claim(self, deadline: float) -> tuple[PooledConnection | None, PooledConnection | None]:
        """Lock held: an idle connection, or a slot for a new one (and what was evicted for it).

        Returns ``(idle, None)``, or ``(None, evicted)`` once a slot is ours:
        ``evicted`` is another pool's idle connection whose slot we took, to
        be closed before ours opens, or None when the cap had room.
        """
        first_wait = True
        waiting_since = 0.0  # set when this checkout first has to wait
        while True:
            if self._closed:
                raise PoolClosedError(
                    f"{self.path}: its pool is closed (the service is shutting down or the "
                    f"database is being dropped); no new connections are handed out."
                )
            if self._idle:
                conn = self._idle.pop()
                self._budget.remove_idle(conn)
                self._handed_out(waiting_since)
                return conn, None
            for_cap = False
            if self._open < self.max_size and self._stale == 0:
                room = self._budget.take_slot()
                evicted = None if room else self._budget.evict_oldest_idle()
                if room or evicted is not None:
                    self._open += 1
                    self._handed_out(waiting_since)
                    return None, evicted
                for_cap = True  # this pool has room, the group does not
            if first_wait and metrics.enabled:
                waiting_since = time.monotonic()
            self._wait(deadline, for_cap=for_cap, first=first_wait)
            first_wait = False

    def _handed_out(self, waiting_since: float) -> None:
        """Lock held: count a checkout (an idle connection, or a slot about to be opened).

        ``waiting_since`` is when the checkout began to wait (metrics on), 0 if it
        did not: a checkout that did not wait costs the metrics nothing here.
        """
        self._busy += 1
        self._budget.checked_out()  # also what the metrics count checkouts that did not wait by
        self._counts["checkouts"] += 1
        if waiting_since:
            metrics.observe(metrics.POOL_WAIT, time.monotonic() - waiting_since)

    def _wait(self, deadline: float, *, for_cap: bool, first: bool) -> None:
        """Lock held: the one place a checkout waits, for this pool's limit or the shared cap.

        Raises ``PoolTimeoutError`` once ``deadline`` has passed; counts
        ``waits`` (once per checkout) and ``timeouts``.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._counts["timeouts"] += 1
            if metrics.enabled:
                metrics.increment(metrics.POOL_TIMEOUTS)
            raise self._timeout_error(for_cap=for_cap)
        if first:
            self._counts["waits"] += 1
        if for_cap:
            self._waiting_for_cap += 1
            try:
                self._budget.wait_for_slot(remaining)
            finally:
                self._waiting_for_cap -= 1
        else:
            self._waiters += 1
            try:
                self._budget.wait_on(self._returned, remaining)
            finally:
                self._waiters -= 1

    def _open_new(self, generation: int) -> PooledConnection:
        """Open a connection in the slot just claimed; give the slot back if that fails."""
        opening = _clock() if metrics.enabled else 0.0
        try:
            conn = open_pooled(
                self.path,
                key=self._key(self.path) if callable(self._key) else self._key,
                connect_kwargs=self.connect_kwargs,
                row_factory=self.row_factory,
                generation=generation,
            )
        except BaseException:
            with self._lock:
                self._busy -= 1
                self._budget.checked_in()
                self._connection_gone()
                self._budget.give_back_slot()
            raise
        if opening:
            metrics.observe(metrics.CONNECT, _clock() - opening)
        identity = _file_identity(self.path)
        with self._lock:
            self._counts["opened"] += 1
            if self._identity is None and generation == self._generation:
                self._first_connection_opened(identity)
        return conn

    def _first_connection_opened(self, identity: tuple[int, int] | None) -> None:
        """Lock held: the pool holds the file open from now on; remember which inode it is.

        The counterpart of ``_last_connection_closed``.
        """
        self._identity = identity

    def _timeout_error(self, *, for_cap: bool) -> PoolTimeoutError:
        if not for_cap:
            limit = self.max_size
            message = (
                f"{self.path}: all {limit} connections of its pool stayed busy for "
                f"{self.timeout:g} s. Requests hold connections too long (a slow query, or a "
                f"connection kept across a network call), or raise max_size or timeout."
            )
        else:
            limit = self._budget.max_connections
            message = (
                f"{self.path}: the process already has {limit} connections open across all "
                f"databases, all busy for {self.timeout:g} s. Raise max_connections (mind the "
                f"file descriptor limit: 3 per connection), or hold connections for less time."
            )
        path = None if for_cap else self.path
        return PoolTimeoutError(message, path=path, limit=limit, timeout=self.timeout)

    # -- check-in --------------------------------------------------------------------

    def _checkin(self, conn: PooledConnection, exc: BaseException | None) -> None:
        """Every checkout ends here: the connection is reset and kept, or closed."""
        if not opened_in_this_process(conn):
            abandon(conn)  # opened by the parent before fork(): never touch it here
            return
        keep = not is_broken(conn, exc)
        rolled_back = False
        if keep:
            try:
                rolled_back = reset(conn, self.row_factory, block_failed=exc is not None)
            except NotReusable as why:
                logger.info(
                    "%s: closing a connection instead of reusing it: %s during the checkout.",
                    self.path,
                    why,
                )
                keep = False
            except (conn.Error, ValueError) as reset_error:  # sqlite3's or sqlcipher3's
                logger.warning(
                    "%s: discarding a connection that failed to reset: %s", self.path, reset_error
                )
                keep = False
        with self._lock:
            if rolled_back:
                self._counts["rollbacks_on_return"] += 1
            self._busy -= 1
            self._budget.checked_in()
            stale = generation_of(conn) != self._generation
            if keep and not stale and not self._closed:
                self._idle.append(conn)
                self._budget.add_idle(conn, self._evicted)
                if self._waiters:  # notify() costs a lock probe even with nobody waiting
                    self._returned.notify()
                if self._waiting_for_cap and not self._budget.evict_idle:
                    # They wait on the budget, and no other pool's waiter may take this one.
                    self._budget.wake_cap_waiters()
                return
        self._close(conn, stale=stale)

    def _evicted(self, conn: PooledConnection) -> None:
        """Lock held: the budget took this idle connection of ours for another pool."""
        self._idle.remove(conn)
        self._counts["closed"] += 1
        self._connection_gone()  # its slot went to the other pool, not back to the budget

    def _close(self, conn: PooledConnection, *, stale: bool = False) -> None:
        """Close one of our connections well, then count it out and free its slot."""
        last_of_replaced = True
        if stale:
            with self._lock:
                last_of_replaced = self._stale <= 1
        close_well(conn, replaced=stale, last_of_replaced=last_of_replaced)
        with self._lock:
            self._counts["closed"] += 1
            if stale:
                self._stale -= 1
            self._connection_gone(wake_all=stale)
            self._budget.give_back_slot()

    def _connection_gone(self, *, wake_all: bool = False) -> None:
        """Lock held: one connection fewer (closed, evicted, or never opened)."""
        self._open -= 1
        if self._open == 0:
            self._last_connection_closed()
        if wake_all or self._closed:
            self._returned.notify_all()  # waiters for "all closed" and for the new file
        else:
            self._returned.notify()

    def _last_connection_closed(self) -> None:
        """Lock held, no connection open: forget which file was open and that it was migrated.

        With no descriptor holding it, the inode can be freed and reused by a
        new file at the same path (a delete and recreate often gets the same
        number), so (device, inode) no longer proves it is the same file. The
        next checkout runs the migrations folder again, which costs a few
        ``stat`` calls and one PRAGMA when nothing is pending. The group's
        owner may let the pool go now (a registry keeps pools only for files
        in use); it is then closed.
        """
        self._identity = None
        self._migrated = self.migrations is None
        if not self._closed and self._budget.pool_unused(self):
            self._closed = True

    def _wait_until_all_closed(self, deadline: float, timeout: float) -> None:
        """After close(): wait until every connection came back and was closed."""
        with self._lock:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeoutError(
                        f"{self.path}: {self._busy} connection(s) to it were still in use after "
                        f"{timeout:g} s; they are closed as they come back.",
                        path=self.path,
                        limit=self.max_size,
                        timeout=timeout,
                    )
                self._waiters += 1
                try:
                    self._budget.wait_on(self._returned, remaining)
                finally:
                    self._waiters -= 1

    # -- fork ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """Start empty in a forked child; the parent's connections are left untouched."""
        for conn in self._idle:
            abandon(conn)
        self._idle = []
        self._open = self._busy = self._stale = self._waiters = self._waiting_for_cap = 0
        self._generation += 1
        self._identity = None
        self._new_locks()


class _Checkout:
    """The context manager ``ConnectionPool.connection()`` returns."""

    __slots__ = ("_conn", "_pool", "_since")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: PooledConnection | None = None
        self._since = 0.0  # when the caller got the connection (while metrics are on)

    def __enter__(self) -> Connection:
        asked = _clock()  # the pool's deadline starts here too: one clock read for both
        self._conn = self._pool._checkout(asked)
        if metrics.enabled:
            self._since = asked
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._since:
                metrics.observe(metrics.POOL_USE, _clock() - self._since)
                self._since = 0.0
            self._pool._checkin(conn, exc)


_clock = time.monotonic  # bound once: read at every checkout, and at its end while metrics are on


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


# -- fork safety (see connection.py) --------------------------------------------------
#
# Runs after budget.py's handler (registered first, at its import), so that each
# pool builds its new condition on its budget's new lock.

_live_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_live_pools):
        pool._after_fork_in_child()


# -- metrics: the gauges of every pool of the process ------------------------------------


class _PoolGauges:
    """What the metrics' gauges read at collection: every budget and pool of the process.

    A budget is a lone pool's or a whole group's (a registry's), so summing
    budgets counts each connection once. Read without the budgets' locks:
    numbers of a moment, as gauges are.
    """

    def connection_gauges(self) -> metrics.ConnectionGauges:
        budgets = live_budgets()
        pools = list(_live_pools)
        open_count = sum(budget.open_connections for budget in budgets)
        used = sum(budget.busy_connections for budget in budgets)
        return metrics.ConnectionGauges(
            open=open_count,
            idle=max(open_count - used, 0),
            used=used,
            pending=sum(budget.waiting for budget in budgets),
            max=sum(budget.max_connections for budget in budgets),
            databases=tuple(pool.path for pool in pools if pool.open_connections),
            checkouts=checkouts_ever(),
        )


_GAUGES = _PoolGauges()
metrics.track(_GAUGES)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
