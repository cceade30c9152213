"""Holding a database file that nobody else has open, for a replace or a delete.

In WAL mode every open connection, Litestream's included, holds a shared
lock on the database file, so an exclusive lock that is granted proves
nobody has it open, and keeps it so while held: a process that tries to open
it meanwhile waits on its busy timeout. Owns taking that lock (with the
connection in exclusive locking mode, which uses no shared memory, so the
next opener re-initialises the ``-shm``), emptying the WAL under it, and
the error that says the file is in use. Used by restore.py (rename a copy
over the file) and erasure.py (delete the file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ReplicationError

DEFAULT_LOCK_WAIT = 1.0


@contextmanager
def held_alone(
    path: str, *, doing: str, error: type[ReplicationError], wait: float = DEFAULT_LOCK_WAIT
) -> Iterator[None]:
    """Hold ``path`` exclusively, its WAL emptied, for the block; ``error`` if it is in use.

    The connection closed at the end neither checkpoints nor deletes
    anything when the file was moved or deleted under it meanwhile (SQLite
    leaves the journal of a moved file alone), so nothing a new opener of
    the path uses is touched.
    """
    try:
        held = sqlite3.connect(path, timeout=wait, isolation_level=None)
    except sqlite3.Error as exc:
        raise error(f"{path} cannot be opened to be {doing}: {exc}", path=path) from exc
    try:
        try:
            # Before the first access: the lock, once taken, is kept until close.
            held.execute("PRAGMA locking_mode=EXCLUSIVE")
            held.execute("BEGIN EXCLUSIVE")
            held.execute("COMMIT")
            busy = held.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            raise error(
                f"{path} is in use (a connection of the service, or Litestream's: {exc}); it "
                f"was left as it was, not {doing}. Stop its use first: registry.quiesce(path) "
                f"in the app (or evict it in every process, or stop the service), and "
                f"unregister it from Litestream (cf-db does when it reaches the sidecar's "
                f"socket).",
                path=path,
            ) from exc
        if busy is not None and busy[0]:
            raise error(
                f"{path}: its WAL could not be emptied; it was left as it was, not {doing}. "
                f"Retry once nothing uses it.",
                path=path,
            )
        yield
    finally:
        held.close()
