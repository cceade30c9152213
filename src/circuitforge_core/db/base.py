"""Compatibility: the connection factory under its old name and import path.

Products written against the first circuitforge_core.db call
``get_connection(db_path, key="")`` from here; it now returns a ``get_db``
connection. The old factory waited 30 s for a lock, so this one does too.
"""

from __future__ import annotations

import os

from .connect import Connection, get_db
from .errors import EncryptionUnavailableError

LEGACY_BUSY_TIMEOUT = 30.0


def get_connection(db_path: str | os.PathLike[str], key: str = "") -> Connection:
    """Open ``db_path`` as ``get_db`` does, with the old 30 s busy timeout.

    A non-empty ``key`` raises ``EncryptionUnavailableError``: encryption is
    not available in this release, and a database is never silently written
    in plaintext when a key was given.
    """
    if key:
        raise EncryptionUnavailableError(
            f"{os.fspath(db_path)}: a key was given but this release of circuitforge_core.db "
            f'cannot open encrypted databases; refusing to write it in plaintext. Pass key="" '
            f"for a plain database."
        )
    return get_db(db_path, busy_timeout=LEGACY_BUSY_TIMEOUT)
