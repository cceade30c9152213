"""ConnectionPool: reusable connections to one SQLite file.

Owns checkout and check-in for one database file: the size limit and the
wait for a free connection, the reset of a connection coming back, running a
migrations folder once before the first connection is handed out, noticing a
file that was deleted or replaced, and never using a connection inherited
across ``fork()``. Does not own which file a request uses, nor limits across
files (tenancy.py), nor how a connection is opened (connect.get_db).

Check-in rules, in order:

1. Every cursor and blob handed out on the connection is closed. An
   unfinished SELECT holds a read snapshot even outside a transaction, and a
   held snapshot stops checkpoints: the WAL file then grows without bound.
2. A transaction left open is rolled back, with a warning when the block
   ended normally (a code path forgot to commit).
3. ``row_factory``, ``text_factory`` and ``isolation_level`` go back to
   what the pool set, so one request's choices never leak into the next.
4. A connection that failed with an I/O, corruption or "not a database"
   error, that its user closed, or whose file was replaced meanwhile, is
   closed instead of being kept.

Lock order: a pool's migration lock, then the budget lock. The budget lock is
one ``threading.Lock`` shared by every pool of a registry (a lone pool has
its own), and every pool's condition is built on it, so counts across files
never need two locks at once. Nothing slow runs under the budget lock:
opening, migrating, resetting and closing connections all happen outside it.
transaction()'s per-file writer lock is only ever taken by the holder of a
checked-out connection, after the budget lock was released.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from .cipher import Key
from .connect import Connection, get_db
from .errors import PoolClosedError, PoolTimeoutError
from .migrations import DEFAULT_LOCK_TIMEOUT, MigrationsDir, run_migrations
from .sqlite_facts import is_broken

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_POOL_SIZE = 8
DEFAULT_POOL_TIMEOUT = 5.0

_CursorT = TypeVar("_CursorT", bound=sqlite3.Cursor)
RowFactory = Callable[[sqlite3.Cursor, tuple[Any, ...]], Any] | None
#: A database key (see cipher.py), or a resolver: called with the file's path
#: each time a connection is opened, returning its key (None: a plain file).
KeySource = Key | Callable[[str], Key | None] | None

_PRUNE_HANDLES_AT = 256


if TYPE_CHECKING:
    _TrackingBase = Connection
else:
    _TrackingBase = object


class _TracksHandles(_TrackingBase):
    """Remembers the cursors and blobs a connection handed out (see PooledConnection).

    A mixin, not a ``Connection`` subclass, so that ``get_db(key=...)`` can put
    the same behaviour on top of sqlcipher3's connection class.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Weak references (a cursor dropped by its user is finalized, and reset,
        # by Python); a plain list is cheaper than a WeakSet on every execute().
        self._handles: list[weakref.ref[Any]] = []
        self._generation = 0
        self._pid = os.getpid()
        self._opened_at = time.monotonic()

    @overload
    def cursor(self, factory: None = None) -> sqlite3.Cursor: ...
    @overload
    def cursor(self, factory: Callable[[sqlite3.Connection], _CursorT]) -> _CursorT: ...
    def cursor(self, factory: Any = None) -> Any:
        cursor = super().cursor() if factory is None else super().cursor(factory)
        self._track(cursor)
        return cursor

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        return self.cursor().executescript(sql_script)

    def blobopen(
        self, table: str, column: str, row: int, /, *, readonly: bool = False, name: str = "main"
    ) -> sqlite3.Blob:
        blob = super().blobopen(table, column, row, readonly=readonly, name=name)
        self._track(blob)
        return blob

    def _track(self, handle: Any) -> None:
        handles = self._handles
        handles.append(weakref.ref(handle))
        if len(handles) > _PRUNE_HANDLES_AT:  # a long checkout running many statements
            self._handles = [ref for ref in handles if ref() is not None]

    def _close_handles(self) -> None:
        """Close every cursor and blob still alive; this resets their statements."""
        handles, self._handles = self._handles, []
        for ref in handles:
            handle = ref()
            if handle is not None:
                handle.close()


class PooledConnection(_TracksHandles, Connection):
    """A ``Connection`` that remembers the cursors and blobs it handed out.

    The pool closes them at check-in. ``execute`` and friends are redefined
    because the C implementation makes its cursor without calling ``cursor()``.
    With a key, the pool's connections are sqlcipher3 connections carrying
    the same mixin instead (typed as this class).
    """


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counts for one pool since it was made; ``open``/``idle``/``busy`` are current."""

    path: str
    open: int
    idle: int
    busy: int
    opened: int
    closed: int
    checkouts: int
    waits: int
    timeouts: int
    rollbacks_on_return: int
    replacements_noticed: int
    migration_runs: int
    migrations_applied: int


class _Budget:
    """How many connections may be open, and the lock every count lives under.

    A lone pool owns one whose cap is its own size; a registry shares one
    across all its pools and keeps the idle connections of all files in one
    least-recently-used order, so that opening a connection to one file can
    close the stalest idle connection of another.
    """

    def __init__(self, cap: int, *, evicts: bool) -> None:
        self.cap = cap
        self.evicts = evicts
        self.open = 0
        self.evictions = 0
        self.migration_runs = 0
        self.migrations_applied = 0
        # The registry's hook, called with the lock held: eviction took a
        # pool's last connection.
        self.on_empty: Callable[[ConnectionPool], None] | None = None
        # id(connection) -> (pool, connection), oldest first; only when evicting.
        self.idle: OrderedDict[int, tuple[ConnectionPool, PooledConnection]] = OrderedDict()
        self.pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
        self._new_locks()
        _live_budgets.add(self)

    def _new_locks(self) -> None:
        self._waiters = 0  # threads waiting on `freed`
        self.lock = threading.Lock()
        # Notified when a connection comes back idle or is closed: either may
        # let a waiter for the cap go on.
        self.freed = threading.Condition(self.lock)

    def oldest_idle(self) -> tuple[ConnectionPool, PooledConnection] | None:
        if not self.idle:
            return None
        _, entry = self.idle.popitem(last=False)
        return entry

    def after_fork_in_child(self) -> None:
        self._new_locks()
        self.open = 0
        self.idle.clear()
        for pool in list(self.pools):
            pool._after_fork_in_child()


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
    returning its key, asked again for every new connection.
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
        _budget: _Budget | None = None,
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
        self._owned = _budget is not None
        self._budget = _budget if _budget is not None else _Budget(max_size, evicts=False)
        self._budget.pools.add(self)
        self._idle: list[PooledConnection] = []  # most recently returned last
        self._open = 0  # open or being opened, busy or idle
        self._busy = 0
        self._waiters = 0  # threads waiting on `_returned`
        self._pins = 0  # registry checkouts under way: not to be retired meanwhile
        self._stale = 0  # open connections to a file since replaced, not closed yet
        self._generation = 0
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._migrated = migrations is None
        self._closed = False
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

    def _new_locks(self) -> None:
        self._returned = threading.Condition(self._budget.lock)
        self._migrate_lock = threading.Lock()

    # -- public ----------------------------------------------------------------------

    def connection(self) -> _Checkout:
        """``with pool.connection() as db:``: a connection for the block, returned reset."""
        return _Checkout(self)

    def close(self) -> None:
        """Close idle connections now, busy ones when they come back; refuse new checkouts."""
        with self._budget.lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            for conn in idle:
                self._budget.idle.pop(id(conn), None)
            self._returned.notify_all()
            self._budget.freed.notify_all()
        for conn in idle:
            self._close_connection(conn)
            self._forget(conn)

    def stats(self) -> PoolStats:
        with self._budget.lock:
            return PoolStats(
                path=self.path,
                open=self._open,
                idle=len(self._idle),
                busy=self._busy,
                **self._counts,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._open} open, {len(self._idle)} idle"
        return f"<ConnectionPool {self.path} ({state})>"

    def __del__(self) -> None:
        open_count = getattr(self, "_open", 0)  # 0 if __init__ raised
        if not getattr(self, "_owned", True) and not self._closed and open_count:
            for conn in self._idle:  # nobody can check these out any more
                with contextlib.suppress(conn.Error):  # sqlite3's or sqlcipher3's
                    conn.close()
            warnings.warn(
                f"ConnectionPool for {self.path} was garbage-collected with {open_count} open "
                f"connection(s); call close() when done with it (or use it as a context manager).",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    # -- checkout --------------------------------------------------------------------

    def _checkout(self) -> PooledConnection:
        deadline = time.monotonic() + self.timeout
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
        with self._budget.lock:
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
                self._budget.idle.pop(id(conn), None)
        for conn in idle:
            self._close_connection(conn, stale=True)
            self._forget(conn, stale=True)

    def _migrate(self, deadline: float) -> PooledConnection | None:
        """Run the migrations folder if no other thread has; return the connection it used.

        That connection goes straight to the caller rather than back to the
        idle list, where another file's checkout could evict it (and, in a
        registry, retire this pool) before the caller got a connection.
        None when another thread had already migrated the file.
        """
        if not self._migrate_lock.acquire(timeout=self.migration_lock_timeout):
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
            generation = conn._generation
            try:
                applied = run_migrations(
                    conn, self.migrations, lock_timeout=self.migration_lock_timeout
                )
                _reset(conn, self.row_factory, block_failed=False)
            except BaseException as exc:
                self._checkin(conn, exc)
                raise
            with self._budget.lock:
                self._counts["migration_runs"] += 1
                self._counts["migrations_applied"] += len(applied)
                self._budget.migration_runs += 1
                self._budget.migrations_applied += len(applied)
                # Not if the file was replaced meanwhile: the new one needs its own run.
                self._migrated = generation == self._generation
            if applied:
                logger.info("%s: applied %d migration(s)", self.path, len(applied))
            return conn
        finally:
            self._migrate_lock.release()

    def _acquire(self, deadline: float) -> PooledConnection:
        """An idle connection, or a new one once there is room for it."""
        budget = self._budget
        victim: tuple[ConnectionPool, PooledConnection] | None = None
        waited = False
        with budget.lock:
            while True:
                if self._closed:
                    raise PoolClosedError(
                        f"{self.path}: its pool is closed (the service is shutting down or the "
                        f"database is being dropped); no new connections are handed out."
                    )
                if self._idle:
                    conn = self._idle.pop()
                    budget.idle.pop(id(conn), None)
                    self._busy += 1
                    self._counts["checkouts"] += 1
                    return conn
                if self._open < self.max_size and self._stale == 0:
                    if budget.open < budget.cap:
                        budget.open += 1
                        break
                    victim = budget.oldest_idle() if budget.evicts else None
                    if victim is not None:
                        # The victim's slot becomes ours; it is closed below,
                        # before ours opens, so the cap is never exceeded.
                        victim_pool, victim_conn = victim
                        victim_pool._idle.remove(victim_conn)
                        victim_pool._open -= 1
                        victim_pool._counts["closed"] += 1
                        victim_pool._returned.notify()
                        budget.evictions += 1
                        if victim_pool._open == 0:
                            victim_pool._lost_last_connection()
                            if budget.on_empty is not None:
                                budget.on_empty(victim_pool)
                        break
                    condition, limit, scope = budget.freed, budget.cap, None
                else:
                    condition, limit, scope = self._returned, self.max_size, self.path
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._counts["timeouts"] += 1
                    raise self._timeout_error(limit, scope)
                if not waited:
                    waited = True
                    self._counts["waits"] += 1
                waiters = budget if condition is budget.freed else self
                waiters._waiters += 1
                try:
                    condition.wait(remaining)
                finally:
                    waiters._waiters -= 1
            self._open += 1
            self._busy += 1
            self._counts["checkouts"] += 1
            generation = self._generation
        if victim is not None:
            victim[0]._close_connection(victim[1])
        try:
            conn = self._open_connection()
        except BaseException:
            with budget.lock:
                self._open -= 1
                self._busy -= 1
                budget.open -= 1
                self._returned.notify()
                budget.freed.notify()
            raise
        conn._generation = generation
        identity = _file_identity(self.path)
        with budget.lock:
            self._counts["opened"] += 1
            if self._identity is None and generation == self._generation:
                self._identity = identity
        return conn

    def _open_connection(self) -> PooledConnection:
        """The one place a connection is opened, with the file's key if it has one."""
        key = self._key(self.path) if callable(self._key) else self._key
        conn = get_db(self.path, factory=PooledConnection, key=key, **self.connect_kwargs)
        assert isinstance(conn, _TracksHandles)  # a PooledConnection, or its encrypted twin
        conn.row_factory = self.row_factory
        return cast(PooledConnection, conn)

    def _timeout_error(self, limit: int, scope: str | None) -> PoolTimeoutError:
        if scope is not None:
            message = (
                f"{self.path}: all {limit} connections of its pool stayed busy for "
                f"{self.timeout:g} s. Requests hold connections too long (a slow query, or a "
                f"connection kept across a network call), or raise max_size or timeout."
            )
        else:
            message = (
                f"{self.path}: the process already has {limit} connections open across all "
                f"databases, all busy for {self.timeout:g} s. Raise max_connections (mind the "
                f"file descriptor limit: 3 per connection), or hold connections for less time."
            )
        return PoolTimeoutError(message, path=scope, limit=limit, timeout=self.timeout)

    # -- check-in --------------------------------------------------------------------

    def _checkin(self, conn: PooledConnection, exc: BaseException | None) -> None:
        if conn._pid != os.getpid():
            _abandon(conn)  # opened by the parent before fork(): never touch it here
            return
        keep = not _is_broken(conn, exc)
        if keep:
            try:
                rolled_back = _reset(conn, self.row_factory, block_failed=exc is not None)
            except (conn.Error, ValueError) as reset_error:  # sqlite3's or sqlcipher3's
                logger.warning(
                    "%s: discarding a connection that failed to reset: %s", self.path, reset_error
                )
                keep = False
            else:
                if rolled_back:
                    with self._budget.lock:
                        self._counts["rollbacks_on_return"] += 1
        budget = self._budget
        with budget.lock:
            stale = conn._generation != self._generation
            if keep and not stale and not self._closed:
                self._busy -= 1
                self._idle.append(conn)
                if budget.evicts:
                    budget.idle[id(conn)] = (self, conn)
                # Only when someone waits: notify() costs a lock probe even then.
                if self._waiters:
                    self._returned.notify()
                if budget._waiters:
                    budget.freed.notify()
                return
            self._busy -= 1
        self._close_connection(conn, stale=stale)
        self._forget(conn, stale=stale)

    def _forget(self, conn: PooledConnection, *, stale: bool = False) -> None:
        """Count a closed connection out, and wake whoever waits for its slot."""
        with self._budget.lock:
            self._open -= 1
            self._budget.open -= 1
            self._counts["closed"] += 1
            if stale:
                self._stale -= 1
            if self._open == 0:
                self._lost_last_connection()
            if stale or self._closed:
                self._returned.notify_all()  # waiters for "all closed" and for the new file
            else:
                self._returned.notify()
            self._budget.freed.notify()

    def _lost_last_connection(self) -> None:
        """Lock held, no connection open: forget which file was open and that it was migrated.

        With no descriptor holding it, the inode can be freed and reused by a
        new file at the same path (a delete and recreate often gets the same
        number), so (device, inode) no longer proves it is the same file. The
        next checkout runs the migrations folder again, which costs a few
        ``stat`` calls and one PRAGMA when nothing is pending.
        """
        self._identity = None
        self._migrated = self.migrations is None

    def _close_connection(self, conn: PooledConnection, *, stale: bool = False) -> None:
        """Close one connection, letting SQLite refresh its planner statistics first.

        ``PRAGMA optimize`` before closing is SQLite's advice for connections
        that lived a while; with ``analysis_limit`` set it costs microseconds
        on small files and stays bounded on big ones. A connection to a file
        since replaced empties that file's WAL instead.
        """
        # A failure here does not matter: closing the connection is what does.
        with contextlib.suppress(conn.Error):
            conn._close_handles()
        if stale:
            self._empty_old_wal(conn)
        try:
            if not stale and not conn.readonly and not conn.in_transaction:
                # Best effort: never wait on another process's write lock for it.
                conn.execute("PRAGMA busy_timeout=0")
                conn.execute("PRAGMA analysis_limit=400")
                conn.execute("PRAGMA optimize")
        except conn.Error as exc:
            logger.debug("%s: PRAGMA optimize before close failed: %s", self.path, exc)
        try:
            conn.close()
        except conn.Error as exc:
            logger.warning("%s: closing a connection failed: %s", self.path, exc)

    def _empty_old_wal(self, conn: PooledConnection) -> None:
        """Checkpoint a replaced file's WAL into its old inode and truncate the -wal.

        SQLite will not checkpoint a database file that was moved or deleted
        when its last connection closes, so it leaves that file's -wal behind;
        the next connection to the path would replay those old pages into the
        new file. Emptying it first prevents that, within this process (other
        processes must stop using the file before it is replaced).
        """
        try:
            conn.execute("PRAGMA busy_timeout=100")
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except conn.Error as exc:
            busy, reason = 1, str(exc)
        else:
            reason = "another connection still reads it"
        if busy:
            with self._budget.lock:
                last = self._stale <= 1
            # Other old connections of ours will try again as they close.
            log = logger.error if last else logger.debug
            log(
                "%s: could not empty the WAL of the file it replaced (%s); the new file may "
                "read stale pages. Stop every process using a database before replacing it.",
                self.path,
                reason,
            )

    # -- lifecycle -------------------------------------------------------------------

    def _close_and_wait(self, deadline: float) -> None:
        """Close, then wait until every connection came back and was closed."""
        self.close()
        with self._budget.lock:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeoutError(
                        f"{self.path}: {self._busy} connection(s) to it were still in use after "
                        f"{self.timeout:g} s, so it was left in place. Retry once the requests "
                        f"using it have finished.",
                        path=self.path,
                        limit=self.max_size,
                        timeout=self.timeout,
                    )
                self._waiters += 1
                try:
                    self._returned.wait(remaining)
                finally:
                    self._waiters -= 1

    def _after_fork_in_child(self) -> None:
        """Start empty in a forked child; the parent's connections are left untouched."""
        for conn in self._idle:
            _abandon(conn)
        self._idle = []
        self._open = self._busy = self._stale = self._waiters = self._pins = 0
        self._generation += 1
        self._identity = None
        self._new_locks()


class _Checkout:
    """The context manager ``ConnectionPool.connection()`` returns."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: PooledConnection | None = None

    def __enter__(self) -> Connection:
        self._conn = self._pool._checkout()
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._checkin(conn, exc)


def _reset(conn: PooledConnection, row_factory: RowFactory, *, block_failed: bool) -> bool:
    """Make a returned connection as good as new; True if it rolled a transaction back."""
    conn._close_handles()
    rolled_back = False
    if conn.in_transaction:
        if not block_failed:
            logger.warning(
                "%s: a connection came back to the pool with its transaction still open; "
                "rolling it back. Commit (or use transaction()) before the block ends.",
                conn.path,
            )
        conn.rollback()
        rolled_back = True
    if conn.row_factory is not row_factory:
        conn.row_factory = row_factory
    if conn.text_factory is not str:
        conn.text_factory = str
    if conn.isolation_level != "IMMEDIATE":
        conn.isolation_level = "IMMEDIATE"
    return rolled_back


def _is_broken(conn: PooledConnection, exc: BaseException | None) -> bool:
    """Whether the error the block raised means the connection must not be reused."""
    if not isinstance(exc, conn.DatabaseError):  # sqlite3's or sqlcipher3's
        return False
    return is_broken(exc)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_dev, stat.st_ino)


# -- fork safety -----------------------------------------------------------------------
#
# SQLite: "Do not open an SQLite database connection, then fork(), then try to
# use that database connection in the child", and do not even close it there
# (https://sqlite.org/howtocorrupt.html): the child would believe it is the last
# connection, checkpoint and delete the -wal the parent still uses. So a forked
# child starts every pool empty, and the inherited connections are kept alive
# forever instead of being closed or garbage-collected.

_live_budgets: weakref.WeakSet[_Budget] = weakref.WeakSet()
_inherited: list[PooledConnection] = []


def _abandon(conn: PooledConnection) -> None:
    _inherited.append(conn)
    try:
        import ctypes

        # A module list is cleared at interpreter exit, which would finalize
        # (close) the connection after all; one extra reference never dropped
        # keeps it out of reach of the finalizer.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    except (ImportError, AttributeError):  # pragma: no cover - no ctypes on this build
        pass


def _after_fork_in_child() -> None:
    for budget in list(_live_budgets):
        budget.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
