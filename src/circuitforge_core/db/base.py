"""Compatibility: the connection factory under its old name and import path.

Products written against the first circuitforge_core.db call
``get_connection(db_path, key="")`` from here; it now returns a ``get_db``
connection. The old factory waited 30 s for a lock, so this one does too,
and its ``key`` now really encrypts (the old ``PRAGMA key=?`` never worked).
"""

from __future__ import annotations

import os

from .connect import Connection, get_db

LEGACY_BUSY_TIMEOUT = 30.0


def get_connection(db_path: str | os.PathLike[str], key: str = "") -> Connection:
    """Open ``db_path`` as ``get_db`` does, with the old 30 s busy timeout.

    A non-empty ``key`` opens the file encrypted with SQLCipher, exactly as
    ``get_db(db_path, key=key)``; without the ``sqlcipher`` extra that raises
    ``EncryptionUnavailableError`` (and writes nothing), never plaintext.
    """
    return get_db(db_path, busy_timeout=LEGACY_BUSY_TIMEOUT, key=key or None)
