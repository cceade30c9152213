"""One pooled connection: the handles it gave out, its reset, closing it well, and fork().

Owns what a pool does to a single connection. ``PooledConnection`` remembers
every cursor and blob it handed out; ``open_pooled`` is the one place a pooled
connection is opened; ``reset`` makes a returning one as good as new (with
connection_state.py, which owns the settings a block can change);
``is_broken`` and ``generation_of`` say when one must not be reused (a fatal
error, or a file replaced since it was opened); ``close_well`` closes one the
way SQLite advises; ``abandon`` keeps one inherited across ``fork()`` alive and
untouched for good. Does not own how many connections exist or the wait for
one (file_pool.py, budget.py).

The pool's bookkeeping on a connection (its handles, the process and the file
generation it was opened for) sits in private attributes read through the
functions below rather than methods: during a checkout the connection is the
user's object, and its namespace stays the standard one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from ..cipher import Key
from ..connect import Connection, get_db
from ..sqlite_facts import is_broken as is_broken_error
from .connection_state import WatchesState, put_back_callbacks, restore, watch

logger = logging.getLogger("circuitforge_core.db")

_CursorT = TypeVar("_CursorT", bound=sqlite3.Cursor)
RowFactory = Callable[[sqlite3.Cursor, tuple[Any, ...]], Any] | None

_PRUNE_HANDLES_AT = 256

#: What get_db pins ``autocommit`` to on Python 3.12+ (None before 3.12: no such attribute).
_LEGACY_TRANSACTION_CONTROL = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", None)


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
        self._handles: list[Callable[[], Any]] = []
        self._generation = 0
        self._pid = os.getpid()

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
        if _blobs_survive_weak_references(type(blob)):
            self._track(blob)
        else:
            self._handles.append(_Held(blob))
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
            if handle is None:
                continue
            if isinstance(ref, _Held):
                with contextlib.suppress(self.ProgrammingError):  # its user closed it already
                    handle.close()
            else:
                handle.close()


class _Held:
    """A strong reference that reads like a weak one, for blobs (see below)."""

    __slots__ = ("_handle",)

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __call__(self) -> Any:
        return self._handle


_blob_types_weakly_tracked: dict[type, bool] = {}


def _blobs_survive_weak_references(blob_type: type) -> bool:
    """Whether a blob of this type can still be closed while a weak reference to it exists.

    pysqlite3 0.6 and sqlcipher3 0.6 raise SystemError from ``close()`` then,
    so their blobs are held strongly until check-in instead of weakly (a blob
    dropped unclosed stays open until then). Tried once per driver, in memory.
    """
    known = _blob_types_weakly_tracked.get(blob_type)
    if known is None:
        known = _blob_types_weakly_tracked[blob_type] = _try_weak_blob(blob_type)
    return known


def _try_weak_blob(blob_type: type) -> bool:
    module = sys.modules.get(blob_type.__module__)
    probe = module.connect(":memory:") if module is not None else None
    if probe is None:
        return False
    try:
        probe.execute("CREATE TABLE t (b BLOB)")
        probe.execute("INSERT INTO t VALUES (zeroblob(1))")
        opened = probe.blobopen if hasattr(probe, "blobopen") else probe.open_blob
        blob = opened("t", "b", 1)
        ref = weakref.ref(blob)
        try:
            blob.close()  # 3.11 raises here; 3.12 leaves the error for the next call
            return ref() is blob
        except SystemError:
            return False
    finally:
        probe.close()


class PooledConnection(_TracksHandles, WatchesState, Connection):
    """A ``Connection`` that remembers the cursors and blobs it handed out, and what it changed.

    The pool closes the handles at check-in and undoes the changes
    (connection_state.py). ``execute`` and friends are redefined because the
    C implementation makes its cursor without calling ``cursor()``. With a
    key, the pool's connections are sqlcipher3 connections carrying the same
    mixins instead (typed as this class).
    """


# -- opening and reading the bookkeeping ----------------------------------------------


def open_pooled(
    path: str,
    *,
    key: Key | None,
    connect_kwargs: Mapping[str, Any],
    row_factory: RowFactory,
    generation: int,
) -> PooledConnection:
    """The one place a pooled connection is opened: ``get_db``, with the key if there is one.

    ``generation`` is the pool's count of replacements of the file when the
    connection was asked for: a connection of an older one is not reused.
    """
    conn = get_db(path, factory=PooledConnection, key=key, **connect_kwargs)
    assert isinstance(conn, _TracksHandles)  # a PooledConnection, or its encrypted twin
    conn.row_factory = row_factory
    conn._generation = generation
    try:
        watch(conn, connect_kwargs)
    except BaseException:
        conn.close()
        raise
    return cast(PooledConnection, conn)


def generation_of(conn: PooledConnection) -> int:
    """The pool's generation of the file this connection was opened on (see open_pooled)."""
    return conn._generation


def opened_in_this_process(conn: PooledConnection) -> bool:
    """False for a connection the parent opened before ``fork()``: never to be touched."""
    return conn._pid == os.getpid()


def is_broken(conn: PooledConnection, exc: BaseException | None) -> bool:
    """Whether the error the block raised means the connection must not be reused."""
    if not isinstance(exc, conn.DatabaseError):  # sqlite3's or sqlcipher3's
        return False
    return is_broken_error(exc)


# -- check-in --------------------------------------------------------------------------


def reset(conn: PooledConnection, row_factory: RowFactory, *, block_failed: bool) -> bool:
    """Make a returned connection as good as new; True if it rolled a transaction back.

    The check-in rules, in order: every cursor and blob it handed out is
    closed (an unfinished SELECT holds a read snapshot even outside a
    transaction, and a held snapshot stops checkpoints, so the WAL would grow
    without bound); an authorizer, progress handler, trace callback or limit
    the block installed is removed (it could refuse the rollback); on Python
    3.12+ ``autocommit`` goes back to the legacy transaction control
    ``get_db`` pins; a transaction left open is rolled back, with a warning
    when the block ended normally (a code path forgot to commit);
    ``row_factory``, ``text_factory`` and ``isolation_level`` go back to what
    the pool set; then every setting the block changed is put back
    (connection_state.py). Raises ``NotReusable`` when that cannot be done:
    the pool closes the connection instead.
    """
    conn._close_handles()
    put_back_callbacks(conn)
    autocommit_was_off = _restore_transaction_control(conn)
    rolled_back = False
    if conn.in_transaction:
        if not block_failed and not autocommit_was_off:  # autocommit=False is always in one
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
    restore(conn)
    return rolled_back


def _restore_transaction_control(conn: PooledConnection) -> bool:
    """Python 3.12+: ``autocommit`` back to legacy control; True if the block had set it False.

    First, so that the rollback after it ends the block's transaction for
    good (with ``autocommit=False`` a rollback opens the next one).
    """
    if _LEGACY_TRANSACTION_CONTROL is None:
        return False
    autocommit = getattr(conn, "autocommit", _LEGACY_TRANSACTION_CONTROL)  # none on sqlcipher3
    if autocommit == _LEGACY_TRANSACTION_CONTROL:
        return False
    cast(Any, conn).autocommit = _LEGACY_TRANSACTION_CONTROL  # typed for 3.11, which has none
    return autocommit is False


# -- closing ---------------------------------------------------------------------------


def close_well(
    conn: PooledConnection, *, replaced: bool = False, last_of_replaced: bool = True
) -> None:
    """Close one connection, letting SQLite refresh its planner statistics first.

    ``PRAGMA optimize`` before closing is SQLite's advice for connections
    that lived a while; with ``analysis_limit`` set it costs microseconds
    on small files and stays bounded on big ones. A connection to a file
    since ``replaced`` empties that file's WAL instead (``last_of_replaced``:
    no other connection of the pool is left to try, so a failure is an error).
    """
    # A failure here does not matter: closing the connection is what does.
    with contextlib.suppress(conn.Error):
        conn._close_handles()
    if replaced:
        _empty_old_wal(conn, last=last_of_replaced)
    try:
        if not replaced and not conn.readonly and not conn.in_transaction:
            # Best effort: never wait on another process's write lock for it.
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA analysis_limit=400")
            conn.execute("PRAGMA optimize")
    except conn.Error as exc:
        logger.debug("%s: PRAGMA optimize before close failed: %s", conn.path, exc)
    try:
        conn.close()
    except conn.Error as exc:
        logger.warning("%s: closing a connection failed: %s", conn.path, exc)


def _empty_old_wal(conn: PooledConnection, *, last: bool) -> None:
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
        # Other old connections of the pool will try again as they close.
        log = logger.error if last else logger.debug
        log(
            "%s: could not empty the WAL of the file it replaced (%s); the new file may "
            "read stale pages. Stop every process using a database before replacing it.",
            conn.path,
            reason,
        )


def close_quietly(connections: Iterable[PooledConnection]) -> None:
    """Close connections nobody can check out any more, from a finalizer: no locks, no SQL."""
    for conn in connections:
        with contextlib.suppress(conn.Error):  # sqlite3's or sqlcipher3's
            conn.close()


# -- fork safety -----------------------------------------------------------------------
#
# SQLite: "Do not open an SQLite database connection, then fork(), then try to
# use that database connection in the child", and do not even close it there
# (https://sqlite.org/howtocorrupt.html): the child would believe it is the last
# connection, checkpoint and delete the -wal the parent still uses. So a forked
# child starts every pool empty (file_pool.py), and the inherited connections
# are kept alive for good instead of being closed or garbage-collected.

_inherited: list[PooledConnection] = []


def abandon(conn: PooledConnection) -> None:
    """Keep a connection inherited across ``fork()`` referenced, and never close it."""
    _inherited.append(conn)
    try:
        import ctypes

        # A module list is cleared at interpreter exit, which would finalize
        # (close) the connection after all; one extra reference never dropped
        # keeps it out of reach of the finalizer.
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
    except (ImportError, AttributeError):  # pragma: no cover - no ctypes on this build
        pass
