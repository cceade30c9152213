"""Why a database file would not open: SQLite's open failures as an OpenError with its reason.

Owns the translation, written once for plain opens (connect.py) and encrypted
ones (cipher.py) alike, of what SQLite reports while it opens and first reads
a file into an ``OpenError`` that names the file, says what to do and carries
its ``reason``. It goes by result codes rather than message text, and looks at
the file system where SQLite's "unable to open database file" hides the real
cause. Opens nothing itself; the messages for a wrong key belong to cipher.py.
"""

from __future__ import annotations

import os
from typing import Literal

from .errors import OpenError
from .sqlite_facts import (
    SQLITE_CANTOPEN,
    SQLITE_CORRUPT,
    SQLITE_IOERR,
    SQLITE_NOTADB,
    SQLITE_READONLY,
    primary_code,
)

#: How a file is opened, as in SQLite's URI ``mode=``: read-only, read-write
#: (the file must exist), or read-write and created when missing.
Access = Literal["ro", "rw", "rwc"]


def unopenable(path: str, exc: BaseException, *, access: Access) -> OpenError:
    """SQLite's "unable to open database file", turned into the actual reason."""
    if access != "rwc" and not os.path.exists(path):
        return OpenError(path, f"{path} does not exist; check the path.", reason="missing")
    if os.path.exists(path) and not os.access(path, os.R_OK | (0 if access == "ro" else os.W_OK)):
        need = "read" if access == "ro" else "read and write"
        return OpenError(
            path,
            f"{path}: permission denied; the service user must be able to {need} it.",
            reason="permission",
        )
    parent = os.path.dirname(path)
    if access != "ro" and not os.access(parent, os.W_OK | os.X_OK):
        return OpenError(
            path,
            f"{path}: its folder {parent} is not writable; SQLite needs to create the "
            f"-wal and -shm files beside the database.",
            reason="permission",
        )
    return OpenError(
        path, f"{path}: cannot open the database ({exc}). Check the path and its permissions."
    )


def open_failed(path: str, exc: BaseException, *, access: Access) -> OpenError:
    """What SQLite said while reading a file it had opened (the schema, the journal mode)."""
    message = str(exc)
    code = primary_code(exc)
    if code is None:  # not an SQLite error after all: judge by the words
        code = SQLITE_NOTADB if "file is not a database" in message else None
    if code in (SQLITE_NOTADB, SQLITE_CORRUPT):
        return OpenError(
            path,
            f"{path} is not a usable SQLite database (SQLite says: {message}). Check "
            f"the path, give its key if it is encrypted, or restore the file from a backup.",
            reason="not_a_database" if code == SQLITE_NOTADB else "damaged",
        )
    if code in (SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_IOERR):
        return unopenable(path, exc, access=access)
    return OpenError(path, f"{path}: cannot open the database ({message}).")
