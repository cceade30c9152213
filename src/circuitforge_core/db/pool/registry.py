"""PoolRegistry: one pool per database file, for the life of the app, under one cap.

Owns the app lifetime of many files' pools: making a file's pool at its first
checkout and letting it go once the file has no connection left (so memory
follows the cap, not the number of users), the process-wide cap shared
through one ``ConnectionBudget`` (with eviction of the least recently used
idle connection), ``evict`` before a file is replaced, ``drop_database`` for
account deletion, and ``close`` at shutdown. Does not own which file a
request uses, nor per-user paths or keys (tenancy.py), nor anything done to
one file's connections (file_pool.py).

The registry talks to a pool only through its public methods
(``connection()``, ``close()``, ``open_connections``) and hears from the pools
through its budget's ``on_pool_unused``. Its own state (the pools, the pins,
the files being dropped) lives under the budget's lock, the one lock of the
group (lock order: see file_pool.py).

Where things happen, one place each: ``_check_out`` (every registry checkout,
on whichever thread enters it), ``_new_pool`` (a file gets a pool),
``_let_go`` and ``_unpin`` (a file's pool is let go), ``_take_out`` (a file
is retired by ``evict``, ``quiesce`` or ``drop_database``),
``_remove_database_files`` (after the file's connections are closed, before
anything is deleted). With ``replication`` or ``placement`` given, the
lifecycle steps around them (lifecycle.py) run there too: a checkout may
restore an absent file or refuse one placed elsewhere, a file's first
connection registers it with Litestream and its pool let go unregisters it,
a drop unregisters and erases it before anything is deleted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ..aio import AsyncCheckout, AsyncWorkers, run_checked_out
from ..connect import Connection
from ..errors import PoolClosedError, PoolTimeoutError, QuiescedError
from ..files import fsync, remove_quietly
from ..migrations import DEFAULT_LOCK_TIMEOUT, MigrationsDir
from ..sqlite_facts import database_files
from .budget import ConnectionBudget
from .connection import RowFactory
from .file_pool import DEFAULT_POOL_TIMEOUT, ConnectionPool, KeySource
from .lifecycle import FileLifecycle, FileReplication

if TYPE_CHECKING:
    import datetime as dt

    from ..placement import Placement
    from ..replication import RestoreResult, SyncResult

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_PER_DATABASE = 4

#: ``get_db`` settings for many small per-user files. cache_size 2 MiB (SQLite's
#: own default): the page cache is per connection, and 256 connections at the
#: single-file 8 MiB would be 2 GiB. mmap_size 0: an I/O error on a mapped file
#: is a SIGBUS that kills every request of the process, and each mapping also
#: counts against vm.max_map_count. journal_size_limit 4 MiB: what a WAL stays
#: near with default checkpoints; a big transaction's WAL shrinks back to it.
CLOUD_CONNECT_KWARGS: Mapping[str, Any] = MappingProxyType(
    {"cache_size_kib": 2048, "mmap_size": 0, "journal_size_limit": 4 * 1024 * 1024}
)

MigrationsFor = MigrationsDir | Callable[[str], MigrationsDir | None] | None


@dataclass(frozen=True, slots=True)
class RegistryStats:
    """Counts across every file of a registry.

    ``databases``: files with a pool right now (one with open connections,
    or in use). ``waiting``: threads blocked right now (checkouts waiting for
    a connection, ``evict``/``drop_database`` waiting for busy ones). Since
    the registry was made: ``evictions``; ``migration_runs``, the times a
    file's folder was run (once when first opened, and again, as a cheap
    check, after all its connections had been closed); ``migrations_applied``,
    the migration files those runs applied.
    """

    databases: int
    open: int
    idle: int
    busy: int
    waiting: int
    max_connections: int
    evictions: int
    migration_runs: int
    migrations_applied: int


class PoolRegistry:
    """One ``ConnectionPool`` per database file, under a process-wide cap.

    ``with registry.connection(path) as db:`` checks out a connection to
    ``path``. At most ``max_connections`` connections are open across all
    files (each WAL connection holds up to 3 file descriptors) and at most
    ``max_per_database`` to one file. Opening one more when the cap is reached
    closes the least recently used idle connection of another file; busy
    connections are never closed under their user; with none idle the caller
    waits up to ``timeout`` seconds, then gets ``PoolTimeoutError``. Each file
    has its ``migrations`` applied once per process, before first use (a
    callable maps a path to its folder). ``key`` encrypts the files: a key,
    or a resolver that maps a path to its key (``user_key_resolver`` derives
    each user's from the server secret). ``connect_kwargs`` go to ``get_db``
    (default: ``CLOUD_CONNECT_KWARGS``). ``close()`` closes every connection.

    ``replication`` (a ``replication.Replicator``, default None: off, and
    free) keeps the host's Litestream replicating exactly the files this
    registry has open; ``placement`` (a ``Placement``) makes a first
    checkout of an absent file restore it when this host owns the user and
    refuse it (``PlacedElsewhereError``) when another does. See
    docs/replication.md for ``sync``, ``quiesce``, ``restore`` and ``compact``.
    """

    def __init__(
        self,
        *,
        migrations: MigrationsFor = None,
        key: KeySource = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_database: int = DEFAULT_MAX_PER_DATABASE,
        timeout: float = DEFAULT_POOL_TIMEOUT,
        connect_kwargs: Mapping[str, Any] = CLOUD_CONNECT_KWARGS,
        row_factory: RowFactory = None,
        migration_lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        replication: FileReplication | None = None,
        placement: Placement | None = None,
    ) -> None:
        if max_connections < 1 or max_per_database < 1:
            raise ValueError("max_connections and max_per_database must be at least 1")
        if replication is not None and key is not None:
            raise ValueError(
                "encrypted files cannot be replicated: Litestream must read the database. Use "
                "the object store's encryption (SSE) for the replica, or turn one of them off."
            )
        self.migrations = migrations
        self.max_connections = max_connections
        self.max_per_database = min(max_per_database, max_connections)
        self.timeout = timeout
        self.connect_kwargs = dict(connect_kwargs)
        self.row_factory = row_factory
        self.migration_lock_timeout = migration_lock_timeout
        self._key_source = key
        self._budget = ConnectionBudget(max_connections, on_pool_unused=self._let_go)
        self._lock = self._budget.lock
        # Pools exist only while their file has connections (or is in use), so
        # memory follows the cap, not the number of users.
        self._pools: dict[str, ConnectionPool] = {}
        # Checkouts between finding a file's pool and getting its connection, per
        # file: a pinned file's pool is not let go when eviction takes its last
        # connection (the caller is about to open one).
        self._pins: dict[str, int] = {}
        self._dropping: set[str] = set()
        self._quiesced: set[str] = set()
        self._lifecycle = (
            None
            if replication is None and placement is None
            else FileLifecycle(replication, placement)
        )
        self._closed = False
        self._async: AsyncWorkers | None = None  # made at the first async checkout
        _live_registries.add(self)
        _warn_if_too_few_file_descriptors(max_connections)

    # -- connections -----------------------------------------------------------------

    def connection(self, path: str | os.PathLike[str]) -> _RegistryCheckout:
        """``with registry.connection(path) as db:``: a pooled connection to ``path``.

        The object returned may be entered and exited on any thread (one
        after the other): an async caller can run both in a worker thread.
        """
        return _RegistryCheckout(self, self._key_of(path))

    def aconnection(self, path: str | os.PathLike[str]) -> AsyncCheckout:
        """``async with registry.aconnection(path) as db:``: the async twin of ``connection()``.

        ``db`` is an ``AsyncConnection``: its checkout, statements and check-in
        run on worker threads (aio/), so waiting for a connection, a lock or
        a statement never blocks the event loop. Async checkouts wait for
        room under the same caps, in the event loop. See docs/async.md.
        """
        key = self._key_of(path)
        return AsyncCheckout(
            functools.partial(self.connection, key), self.async_workers, path=key, key=key
        )

    async def arun(
        self,
        path: str | os.PathLike[str],
        function: Callable[..., _T],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> _T:
        """``function(connection, *args, **kwargs)`` on a connection to ``path``, in one trip."""
        key = self._key_of(path)
        checkout = functools.partial(self.connection, key)
        return await run_checked_out(checkout, self.async_workers, function, args, kwargs, key=key)

    def _key_of(self, path: str | os.PathLike[str]) -> str:
        given = os.fspath(path)
        # A key of _pools is already absolute and normalised: skip abspath for it.
        return given if given in self._pools else os.path.abspath(given)

    @property
    def async_workers(self) -> AsyncWorkers:
        """The async capacity limit: one slot per connection, per file and in all."""
        workers = self._async
        if workers is None:
            with self._lock:
                if self._async is None:
                    self._async = AsyncWorkers(
                        self.max_connections,
                        timeout=self.timeout,
                        describe="the pool registry",
                        per_key_limit=self.max_per_database,
                    )
                workers = self._async
        return workers

    @property
    def open_connections(self) -> int:
        """Connections open right now across all files (cheap: for a metrics gauge)."""
        return self._budget.open_connections

    def _check_out(self, key: str) -> tuple[AbstractContextManager[Connection], Connection]:
        """A connection to the absolute path ``key`` and the pool checkout it came from.

        Every registry checkout happens here. A pool that ``evict`` or
        ``drop_database`` closed between the lookup and the checkout has a
        successor by the next lookup, so that is retried a few times.
        """
        lifecycle = self._lifecycle
        if lifecycle is not None:
            lifecycle.before_checkout(key)
        for attempt in range(_CHECKOUT_ATTEMPTS):
            pool = self._pin(key)
            checkout = pool.connection()
            try:
                conn = checkout.__enter__()
                if lifecycle is not None:
                    lifecycle.after_checkout(key, pool)
                return checkout, conn
            except PoolClosedError:
                retired = self._pools.get(key) is not pool
                if not retired or self._closed or attempt == _CHECKOUT_ATTEMPTS - 1:
                    raise
            finally:
                self._unpin(key, pool)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _pin(self, key: str) -> ConnectionPool:
        """The pool for ``key`` (made when missing), pinned until ``_unpin``."""
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                self._check_open(key)
                pool = self._pools[key] = self._new_pool(key)
            pins = self._pins
            pins[key] = pins.get(key, 0) + 1
            return pool

    def _unpin(self, key: str, pool: ConnectionPool) -> None:
        """The checkout that pinned ``pool`` is over; let the pool go if it ended up empty."""
        with self._lock:
            pins = self._pins
            left = pins[key] - 1
            if left:
                pins[key] = left
                return
            del pins[key]
            if pool.open_connections:
                return
            # The checkout failed (a migration, a timeout) and left no connection.
            unused = self._pools.get(key) is pool
            if unused:
                del self._pools[key]
                if self._lifecycle is not None:
                    self._lifecycle.closed(key, pool)
        if unused:
            pool.close()

    def _let_go(self, pool: ConnectionPool) -> bool:
        """Budget callback, lock held: ``pool`` has no connection left; forget it unless pinned."""
        key = pool.path
        if key in self._pins or self._pools.get(key) is not pool:
            return False
        del self._pools[key]
        if self._lifecycle is not None:
            self._lifecycle.closed(key, pool)  # records a wish; never blocks
        return True

    def _new_pool(self, path: str) -> ConnectionPool:
        """Lock held: the pool for a file that has none; cheap, it opens nothing yet."""
        migrations = self.migrations(path) if callable(self.migrations) else self.migrations
        return ConnectionPool(
            path,
            migrations=migrations,
            key=self._key_source,
            max_size=self.max_per_database,
            timeout=self.timeout,
            connect_kwargs=self.connect_kwargs,
            row_factory=self.row_factory,
            migration_lock_timeout=self.migration_lock_timeout,
            budget=self._budget,
        )

    def _check_open(self, key: str) -> None:
        if self._closed:
            raise PoolClosedError(
                f"{key}: the pool registry is closed (the service is shutting down); no new "
                f"connections are handed out."
            )
        if key in self._dropping:
            raise PoolClosedError(
                f"{key} is being deleted (drop_database); no new connections to it are handed out."
            )
        if key in self._quiesced:
            raise QuiescedError(
                f"{key} is quiesced (being moved, restored or compacted); no new connections to "
                f"it are handed out until it is resumed. Retry shortly (HTTP 503, Retry-After).",
                path=key,
            )

    # -- retiring files --------------------------------------------------------------

    def evict(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> None:
        """Close every connection to ``path``, waiting up to ``timeout`` for busy ones.

        Use before replacing the file (a restore) or moving it. The next use
        opens it afresh and checks its migrations again.
        """
        key = self._key_of(path)
        with self._lock:
            pool = self._pools.pop(key, None)
        self._take_out(pool, timeout)
        if self._lifecycle is not None and pool is not None:
            self._lifecycle.closed(key, pool)

    def drop_database(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        erase_replica: bool = True,
    ) -> list[str]:
        """Delete one database for good (account deletion); returns what was removed.

        Every connection of this process to it is closed first (waiting up to
        ``timeout`` for busy ones; new checkouts are refused meanwhile). With
        replication on, Litestream lets go of it next and, with
        ``erase_replica``, its replica and Litestream's state beside it are
        deleted (a failure there raises before anything local is deleted;
        ``erase_replica=False`` after a move, when the replica belongs to the
        new host). Then the -wal, -shm and -journal files go before the
        database itself (a stray -wal would be replayed into a new file of
        the same name), then ``<db>.migrate-lock``. Other processes must have
        closed theirs. A quiesced file may be dropped (the end of a move); it
        is not quiesced afterwards.
        """
        key = self._key_of(path)
        with self._lock:
            if key not in self._quiesced:
                self._check_open(key)
            self._dropping.add(key)
            pool = self._pools.pop(key, None)
        try:
            self._take_out(pool, timeout)
            erased: list[str] = []
            if self._lifecycle is not None:
                self._lifecycle.release(key, pool, final_sync=False, timeout=timeout)
                erased = self._lifecycle.drop(key, erase_replica=erase_replica)
            return [*erased, *_remove_database_files(key)]
        finally:
            with self._lock:
                self._dropping.discard(key)
                self._quiesced.discard(key)  # gone: from now on the placement decides

    # -- replication (docs/replication.md) ----------------------------------------------

    def sync(
        self, path: str | os.PathLike[str], *, timeout: float | None = None
    ) -> SyncResult | None:
        """Return once the replica has every transaction committed to ``path`` so far.

        For the few writes that must survive the loss of the host: commit,
        then call this. ``ReplicationError`` means committed here but not
        confirmed replicated (in ``timeout``). None when replication is off.
        """
        replication = self._replication_or_none()
        if replication is None:
            return None
        return replication.sync(self._key_of(path), timeout=timeout)

    def quiesce(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        final_sync: bool = True,
    ) -> Quiesced:
        """Stop using ``path``: refuse new checkouts, wait for busy ones, close, final sync.

        New checkouts raise ``QuiescedError`` until ``resume(path)`` (or the
        end of the returned handle's ``with`` block); busy connections are
        waited for up to ``timeout``. With replication on, Litestream then
        syncs the file one last time (unless ``final_sync=False``) and lets
        go of it; ``ReplicationError`` if the replica cannot confirm (the
        file is resumed: retry). The first step of a move, a restore over a
        live file, and ``compact``.
        """
        key = self._key_of(path)
        with self._lock:
            self._check_open(key)
            self._quiesced.add(key)
            pool = self._pools.pop(key, None)
        try:
            self._take_out(pool, timeout)
            if self._lifecycle is not None:
                self._lifecycle.release(key, pool, final_sync=final_sync, timeout=timeout)
        except BaseException:
            self.resume(key)
            raise
        return Quiesced(self, key)

    def resume(self, path: str | os.PathLike[str]) -> None:
        """Hand out connections to a quiesced ``path`` again (it is registered at first use)."""
        with self._lock:
            self._quiesced.discard(self._key_of(path))

    def restore(
        self,
        path: str | os.PathLike[str],
        *,
        timestamp: dt.datetime | str | None = None,
        timeout: float | None = None,
    ) -> RestoreResult:
        """Replace ``path`` with its replica's copy (at ``timestamp``) while the service runs.

        Quiesces the file (new checkouts wait out a ``QuiescedError``), lets
        Litestream sync and release it, restores atomically beside it and
        renames it into place, then resumes: the next checkout opens the
        restored file, migrates it and registers it again. Other processes
        must have stopped using the file (quiesce it there too).
        """
        replication = self._replication_or_none()
        if replication is None:
            raise ValueError("restore needs replication: make the registry with replication=")
        # No final sync first: the replica's latest state would become the live one.
        with self.quiesce(path, timeout=timeout, final_sync=False) as key:
            result = replication.restore(key, timestamp=timestamp, replace=True)
        assert result is not None  # missing_ok was not given
        return result

    def compact(self, path: str | os.PathLike[str], *, timeout: float | None = None) -> bool:
        """Give a file's WAL back: quiesce, fold the WAL into the database and empty it, resume.

        Under replication Litestream's read lock keeps ``journal_size_limit``
        from shrinking the WAL; files whose last connection closes are
        compacted by the replicator on their own, this is for a busy one.
        Waits up to ``timeout`` (the registry's by default) for readers of
        the file to leave. True if the WAL was emptied (another process still
        reading it prevents that).
        """
        replication = self._replication_or_none()
        if replication is None:
            raise ValueError("compact is for replicated files: make the registry with replication=")
        wait = self.timeout if timeout is None else timeout
        with self.quiesce(path, timeout=timeout) as key:
            return replication.truncate_wal(key, timeout=wait)

    def _replication_or_none(self) -> FileReplication | None:
        return None if self._lifecycle is None else self._lifecycle.replication

    def _take_out(self, pool: ConnectionPool | None, timeout: float | None) -> None:
        """Close a pool already removed from the registry, and wait for its busy connections."""
        if pool is None:
            return
        wait = self.timeout if timeout is None else timeout
        try:
            pool.close(timeout=wait)
        except PoolTimeoutError as exc:
            raise PoolTimeoutError(
                f"{pool.path}: {pool.stats().busy} connection(s) to it were still in use after "
                f"{wait:g} s, so it was left in place. Retry once the requests using it have "
                f"finished.",
                path=pool.path,
                limit=pool.max_size,
                timeout=wait,
            ) from exc

    def close(self) -> None:
        """Close every connection: idle ones now, busy ones as they come back."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()
            if self._lifecycle is not None:
                self._lifecycle.closed(pool.path, pool)

    # -- introspection ---------------------------------------------------------------

    def stats(self) -> RegistryStats:
        budget = self._budget
        with self._lock:
            return RegistryStats(
                databases=len(self._pools),
                open=budget.open_connections,
                idle=budget.idle_connections,
                busy=budget.busy_connections,
                waiting=budget.waiting,
                max_connections=self.max_connections,
                evictions=budget.evictions,
                migration_runs=budget.migration_runs,
                migrations_applied=budget.migrations_applied,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> PoolRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<PoolRegistry {len(self._pools)} databases, {self._budget.open_connections}/"
            f"{self.max_connections} connections open{' (closed)' if self._closed else ''}>"
        )

    def __del__(self) -> None:
        # Its pools close their idle connections as they are collected with it.
        budget = getattr(self, "_budget", None)
        if budget is not None and not self._closed and budget.open_connections:
            warnings.warn(
                f"PoolRegistry was garbage-collected with {budget.open_connections} open "
                f"connection(s); call close() at shutdown (or use it as a context manager).",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    # -- fork ------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """The threads that pinned pools or dropped files did not survive the fork."""
        self._lock = self._budget.lock  # new: the budget started empty first
        self._pins.clear()
        self._dropping.clear()


_CHECKOUT_ATTEMPTS = 5
_T = TypeVar("_T")


class Quiesced:
    """A quiesced file (``registry.quiesce``): ``with`` it to resume when the block ends."""

    __slots__ = ("_registry", "path")

    def __init__(self, registry: PoolRegistry, path: str) -> None:
        self._registry = registry
        self.path = path

    def resume(self) -> None:
        self._registry.resume(self.path)

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc_info: object) -> None:
        self.resume()


class _RegistryCheckout:
    """The context manager ``PoolRegistry.connection()`` returns."""

    __slots__ = ("_checkout", "_path", "_registry")

    def __init__(self, registry: PoolRegistry, path: str) -> None:
        self._registry = registry
        self._path = path
        self._checkout: AbstractContextManager[Connection] | None = None

    def __enter__(self) -> Connection:
        self._checkout, conn = self._registry._check_out(self._path)
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        checkout, self._checkout = self._checkout, None
        if checkout is not None:
            checkout.__exit__(exc_type, exc, traceback)


def _remove_database_files(path: str) -> list[str]:
    """Remove the database and what SQLite and the runner keep beside it, -wal first; durably.

    The place to hang "before a drop": every connection of this process to
    the file is closed by now, and nothing is deleted yet.
    """
    removed = remove_quietly(*database_files(path))
    with contextlib.suppress(OSError):  # make the removal durable; not possible everywhere
        fsync(os.path.dirname(path))
    logger.info("dropped database %s (%d files removed)", path, len(removed))
    return removed


_fd_limit_checked = threading.Event()


def _warn_if_too_few_file_descriptors(max_connections: int) -> None:
    """Warn once when the process cannot hold the cap's file descriptors."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3 * max_connections + 64
    if soft != resource.RLIM_INFINITY and soft < needed and not _fd_limit_checked.is_set():
        _fd_limit_checked.set()
        logger.warning(
            "the open-file limit (%d) is below what %d pooled connections may need (%d: 3 per "
            "connection plus sockets); raise `ulimit -n` or lower max_connections",
            soft,
            max_connections,
            needed,
        )


# -- fork safety (see connection.py) ----------------------------------------------------

_live_registries: weakref.WeakSet[PoolRegistry] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for registry in list(_live_registries):
        registry._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
