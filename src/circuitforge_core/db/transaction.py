"""transaction(): one BEGIN IMMEDIATE block, nesting as savepoints.

Owns how a block of work becomes atomic. Does not own connections.

Why IMMEDIATE: a deferred transaction that reads and then writes must
upgrade its lock, and SQLite answers SQLITE_BUSY at once instead of waiting
(the busy handler could deadlock there). Taking the write lock up front makes
a second writer wait on the busy timeout instead.

Why a lock of our own: SQLite's busy handler polls with back-off and no
queue, so under contention one writer can starve while others barge in.
Threads of one process that write the same file through ``transaction()``
first queue on an in-process ``WriterLock`` (writer_lock.py), one per file,
served close to arrival order, with the connection's busy timeout as the
deadline; the busy handler is then left to waits across processes only.
Lock order: this per-file lock, then SQLite's write lock.

What it counts (metrics.py, while recording is on): the wait for that lock
(an async caller's wait in the event loop too), the time in ``BEGIN
IMMEDIATE`` (SQLite's own busy wait for other processes), the block's
duration and its failures.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from . import metrics
from .errors import TransactionError
from .sqlite_facts import DEFAULT_BUSY_TIMEOUT
from .writer_lock import WriterLock, WriterLocks

ConnectionT = TypeVar("ConnectionT", bound=sqlite3.Connection)

_clock = time.perf_counter  # bound once: it is read three times per block while counting
_savepoint_numbers = itertools.count(1)
_writer_locks = WriterLocks()


@contextmanager
def transaction(db: ConnectionT, *, writer_lock_wait: float | None = None) -> Iterator[ConnectionT]:
    """Run the block in one ``BEGIN IMMEDIATE`` transaction.

    Commits when the block ends, rolls back if it raises. Inside an open
    transaction it becomes a savepoint instead: its failure undoes only its
    own work and the exception still propagates. Do not call ``commit()`` or
    ``rollback()`` inside the block; that raises ``TransactionError``.

    ``writer_lock_wait``: set when the caller already holds
    ``writer_lock_for(db)`` (the async API waits for it without holding a
    thread), to the seconds it waited for it (0 when it was free, None for
    not measured); the block counts that wait and releases the lock when it
    ends, or at once if it becomes a savepoint.
    """
    lock = writer_lock_for(db)
    held = writer_lock_wait is not None
    if db.in_transaction:
        if held and lock is not None:
            lock.release()
        with _savepoint(db):
            yield db
        return
    counting = metrics.enabled
    lock_wait: float | None = writer_lock_wait or None  # granted at once, or not counting
    if lock is not None and not held and not lock.acquire(blocking=False):
        asked = _clock()
        if not lock.acquire(timeout=busy_timeout_of(db)):
            raise locked_by_this_process(db)
        lock_wait = _clock() - asked
    try:
        granted = _clock() if counting else 0.0
        try:
            db.execute("BEGIN IMMEDIATE")
        except BaseException:  # busy past the timeout: a failed block, counted as such
            if counting:
                metrics.observe_transaction(lock_wait, _clock() - granted, 0.0, True)
            raise
        begun = _clock() if counting else 0.0
        committed = False
        try:
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if not db.in_transaction:
                raise TransactionError(
                    "the transaction() block ended the transaction itself (commit() or "
                    "rollback() inside it); its work is no longer atomic. Let the block commit "
                    "by ending."
                )
            try:
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            committed = True
        finally:
            if counting:
                metrics.observe_transaction(
                    lock_wait, begun - granted, _clock() - begun, not committed
                )
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def _savepoint(db: sqlite3.Connection) -> Iterator[None]:
    name = f"cf_savepoint_{next(_savepoint_numbers)}"
    db.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute(f"ROLLBACK TO {name}")
            db.execute(f"RELEASE {name}")
        raise
    if not db.in_transaction:
        raise TransactionError(
            "a nested transaction() block ended the outer transaction itself (commit() or "
            "rollback() inside it). Let the blocks commit by ending."
        )
    db.execute(f"RELEASE {name}")


def locked_by_this_process(db: sqlite3.Connection) -> sqlite3.OperationalError:
    """The error for a writer that waited its busy timeout for the in-process writer lock."""
    return db.OperationalError(  # sqlite3's or sqlcipher3's
        f"database is locked: {getattr(db, 'path', '?')}: other threads of this process "
        f"kept writing it for longer than the busy timeout"
    )


def writer_lock_for(db: sqlite3.Connection) -> WriterLock | None:
    """The in-process writer lock ``transaction()`` takes for the file behind ``db``.

    None when the file is unknown (a plain ``sqlite3.Connection`` has no ``path``).
    """
    path = getattr(db, "path", None)  # ours, plain or encrypted
    if not isinstance(path, str):
        return None
    return _writer_locks.for_path(path)


def busy_timeout_of(db: sqlite3.Connection) -> float:
    """Seconds ``db`` waits for a lock (get_db's ``busy_timeout``)."""
    return float(getattr(db, "busy_timeout", DEFAULT_BUSY_TIMEOUT))
