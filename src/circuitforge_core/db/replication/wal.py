"""Giving an idle file's WAL back once Litestream has let go of it.

While a file is registered, Litestream holds a read transaction on it to own
its checkpoints, so neither ``journal_size_limit`` nor the app's own
checkpoints can shrink the ``-wal``: after a burst it stays at its high-water
mark. Once the file is unregistered nothing holds it, and one ``TRUNCATE``
checkpoint folds the WAL into the database and empties it. Owns that one
step; never waits for a lock (a file in use again is simply left alone).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse

logger = logging.getLogger("circuitforge_core.db")


def truncate_wal(path: str) -> bool:
    """Checkpoint ``path`` and truncate its ``-wal`` if nobody reads it; True if it did.

    A no-op for a file without a WAL (or without one worth the open).
    """
    try:
        if os.path.getsize(path + "-wal") == 0:
            return False
    except FileNotFoundError:
        return False
    try:
        uri = f"file:{urllib.parse.quote(path)}?mode=rw"  # never creates a file that went away
        db = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)
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
