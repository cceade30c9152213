"""Giving an idle file's WAL back once Litestream has let go of it.

While a file is registered, Litestream holds a read transaction on it to own
its checkpoints, so neither ``journal_size_limit`` nor the app's own
checkpoints can shrink the ``-wal``: after a burst it stays at its high-water
mark. Once the file is unregistered nothing holds it, and one ``TRUNCATE``
checkpoint folds the WAL into the database and empties it. Owns that one
step. The background pass waits for no lock (a file in use again is simply
left alone); an explicit compact waits a bounded time, because Litestream may
take a moment to let go of the read lock it held.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse

logger = logging.getLogger("circuitforge_core.db")


def truncate_wal(path: str, *, timeout: float = 0.0) -> bool:
    """Checkpoint ``path`` and truncate its ``-wal`` if nobody reads it; True if it did.

    ``timeout`` is how long to wait for readers and writers to leave (0: not
    at all). A no-op for a file without a WAL (or without one worth the open).
    """
    try:
        if os.path.getsize(path + "-wal") == 0:
            return False
    except FileNotFoundError:
        return False
    try:
        uri = f"file:{urllib.parse.quote(path)}?mode=rw"  # never creates a file that went away
        db = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:  # locked, encrypted, or gone meanwhile: leave it
        logger.debug("%s: WAL not truncated: %s", path, exc)
        return False
    finally:
        db.close()
    return not busy
