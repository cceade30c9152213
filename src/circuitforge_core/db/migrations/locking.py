"""The migration lock: SQLite's write lock held past the busy timeout, and the lock file.

Owns waiting for ``BEGIN IMMEDIATE`` up to the migration's deadline (there is
no lock table, so no stale lock to break after a crash), the ``flock`` on
``<database>.migrate-lock`` that stands in for it while a no-transaction file
runs, and finding the file behind a connection. Does not run statements.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator

from ..errors import MigrationError
from ..sqlite_facts import MIGRATION_LOCK_SUFFIX, is_busy, retry_while_busy

try:  # POSIX only; elsewhere no-transaction files are not serialised across processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("circuitforge_core.db")

#: Seconds a migration, repair or baseline waits for another caller's write lock.
DEFAULT_LOCK_TIMEOUT = 600.0


@contextlib.contextmanager
def immediate(db: sqlite3.Connection, deadline: float, name: str | None = None) -> Iterator[None]:
    """A ``BEGIN IMMEDIATE`` transaction, waiting past the busy timeout up to ``deadline``.

    Commits if the block ends normally and the transaction is still open.
    ``name`` is the migration about to run, for the message when the wait ends.
    """
    try:
        retry_while_busy(
            lambda: db.execute("BEGIN IMMEDIATE"),
            deadline,
            on_first_wait=lambda: logger.info(
                "waiting for another connection to release %s", database_path(db)
            ),
        )
    except db.OperationalError as exc:  # sqlite3's or sqlcipher3's
        if not is_busy(exc):
            raise
        applying = f" to apply {name}" if name is not None else ""
        raise MigrationError(
            f"gave up waiting for the write lock on {database_path(db)}{applying}: another "
            f"connection held it past the migration lock timeout; nothing was applied. Find the "
            f"process holding it, or raise lock_timeout.",
            name=name,
        ) from exc
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if db.in_transaction:
        db.execute("COMMIT")


@contextlib.contextmanager
def file_lock(db_path: str | None, deadline: float, name: str | None = None) -> Iterator[None]:
    """Serialise no-transaction migrations across processes with a lock file.

    They cannot hold SQLite's write lock while they run, so ``<db>.migrate-lock``
    stands in for it.
    """
    if db_path is None or fcntl is None:
        yield
        return
    # Private like the database beside it (0600), whatever the umask.
    descriptor = os.open(db_path + MIGRATION_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    with open(descriptor, "r+b") as handle:
        try:
            retry_while_busy(
                lambda: fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB),
                deadline,
                busy=lambda exc: isinstance(exc, BlockingIOError),
            )
        except BlockingIOError:
            raise MigrationError(
                f"gave up waiting for {db_path}{MIGRATION_LOCK_SUFFIX} to apply {name}: another "
                f"process kept running a no-transaction migration past the lock timeout; "
                f"nothing was applied.",
                name=name,
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def database_path(db: sqlite3.Connection) -> str | None:
    """The file behind the connection's main database, None for in-memory ones."""
    path = getattr(db, "path", None)  # ours, plain or encrypted (not a sqlite3.Connection)
    if isinstance(path, str):
        return path
    for _seq, schema, filename in db.execute("PRAGMA database_list"):
        if schema == "main":
            return str(filename) or None
    return None
