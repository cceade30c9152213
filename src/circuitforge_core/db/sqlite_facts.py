"""What every module must know about SQLite itself: result codes, the header, quoting, versions.

Owns facts that hold for any SQLite file and library, written once so that no
module keeps its own copy, plus the one loop that waits out a busy write
lock. Imports nothing of this package, so every module may use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

# -- result codes (https://sqlite.org/rescode.html) ----------------------------------

SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26
#: The file was moved or replaced under an open connection.
SQLITE_READONLY_DBMOVED = SQLITE_READONLY | (4 << 8)
#: The -shm file (the WAL index) could not be created, grown or mapped: a full disk, typically.
SQLITE_IOERR_SHMOPEN = SQLITE_IOERR | (18 << 8)
SQLITE_IOERR_SHMSIZE = SQLITE_IOERR | (19 << 8)
SQLITE_IOERR_SHMMAP = SQLITE_IOERR | (21 << 8)

#: Primary codes after which a connection is not trusted again.
BROKEN_CONNECTION_CODES = frozenset({SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_CANTOPEN, SQLITE_NOTADB})


def error_code(exc: BaseException) -> int | None:
    """The extended result code of an ``sqlite3`` (or ``sqlcipher3``) error, if it has one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code if isinstance(code, int) else None


def primary_code(exc: BaseException) -> int | None:
    """The primary result code (the low byte of the extended one), if there is one."""
    code = error_code(exc)
    return None if code is None else code & 0xFF


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock we need."""
    return primary_code(exc) in (SQLITE_BUSY, SQLITE_LOCKED)


def is_broken(exc: BaseException) -> bool:
    """An error after which the connection must not be handed out again."""
    code = error_code(exc)
    if code is None:
        return False
    return code & 0xFF in BROKEN_CONNECTION_CODES or code == SQLITE_READONLY_DBMOVED


# -- files ---------------------------------------------------------------------------

#: The first 16 bytes of every plain SQLite database (https://sqlite.org/fileformat.html).
HEADER = b"SQLite format 3\x00"
#: What SQLite puts beside a database file.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
#: The migration runner's lock file beside a database (no-transaction files take it).
MIGRATION_LOCK_SUFFIX = ".migrate-lock"
#: The longest full path (symbolic links resolved, in bytes) of a database file
#: SQLite's unix VFS opens: it takes names of up to 512 bytes (``MAX_PATHNAME``)
#: and its pager keeps 8 of them spare for the ``-journal`` and ``-wal`` names.
MAX_DATABASE_PATH_BYTES = 504


def companion_files(path: str) -> tuple[str, ...]:
    """The ``-wal``, ``-shm`` and ``-journal`` names beside the database at ``path``."""
    return tuple(path + suffix for suffix in COMPANION_SUFFIXES)


def database_files(path: str) -> tuple[str, ...]:
    """Every file a database at ``path`` may have, in the order to delete them.

    The companions go first (a -wal left beside a deleted database would be
    replayed into a new file of that name), then the database, then the
    runner's lock file.
    """
    return (*companion_files(path), path, path + MIGRATION_LOCK_SUFFIX)


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier, safe whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


# -- versions ------------------------------------------------------------------------

#: The oldest SQLite the package works with: ``sqlite_schema`` (3.33) in the
#: encryption and backup code, ``PRAGMA analysis_limit`` (3.32) when a pooled
#: connection closes, and ``RETURNING`` (3.35), which the RETURNING rule is about.
OLDEST_SUPPORTED_SQLITE = (3, 35, 0)

#: SQLite releases before this one carry the WAL-reset bug, which can corrupt a
#: WAL database when two connections write and checkpoint at the same moment.
FIRST_SQLITE_WITHOUT_WAL_RESET_BUG = (3, 51, 3)
WAL_RESET_BUG_URL = "https://sqlite.org/wal.html#walresetbug"


def version_info(version: str) -> tuple[int, ...]:
    """``"3.40.1"`` -> ``(3, 40, 1)``."""
    return tuple(int(part) for part in version.split(".")[:3])


def has_wal_reset_bug(version: str) -> bool:
    """Whether the SQLite library of this version carries the WAL-reset bug."""
    return version_info(version) < FIRST_SQLITE_WITHOUT_WAL_RESET_BUG


# -- driver differences --------------------------------------------------------------


def blob_through_open_blob(
    db: Any, table: str, column: str, row: int, *, readonly: bool, name: str
) -> Any:
    """``blobopen`` for the drivers that call it ``open_blob`` (pysqlite3, sqlcipher3).

    They name the schema argument ``dbname``; the blob they return reads,
    writes, seeks and closes like the standard library's.
    """
    return db.open_blob(table, column, row, readonly=readonly, dbname=name)


_extended_codes_by_module: dict[str, bool] = {}


def reports_extended_codes(exc: BaseException) -> bool:
    """Whether the DB-API module that raised ``exc`` gives SQLite's extended result codes.

    The standard library's does (2067, SQLITE_CONSTRAINT_UNIQUE); pysqlite3 and
    sqlcipher3 give the primary code only (19), so an extended code cannot be
    told apart there. Tried once per module, on a database in memory.
    """
    name = type(exc).__module__
    known = _extended_codes_by_module.get(name)
    if known is None:
        known = _extended_codes_by_module[name] = _try_extended_codes(sys.modules.get(name))
    return known


def _try_extended_codes(module: Any) -> bool:
    connect = getattr(module, "connect", None)
    if connect is None:
        return False
    probe = connect(":memory:")
    try:
        probe.execute("CREATE TABLE t (x UNIQUE)")
        probe.execute("INSERT INTO t VALUES (1)")
        try:
            probe.execute("INSERT INTO t VALUES (1)")
        except module.IntegrityError as exc:
            return (error_code(exc) or 0) > 0xFF
        return False
    finally:
        probe.close()


# -- defaults ------------------------------------------------------------------------

#: Seconds a connection waits for another's lock unless told otherwise. Here,
#: not in connect.py, because modules that connect.py imports need it too.
DEFAULT_BUSY_TIMEOUT = 5.0


# -- waiting for the write lock ------------------------------------------------------


def retry_while_busy(
    action: Callable[[], _T],
    deadline: float,
    *,
    interval: float = 0.01,
    on_first_wait: Callable[[], None] | None = None,
    busy: Callable[[BaseException], bool] = is_busy,
) -> _T:
    """Run ``action`` again while it fails with SQLITE_BUSY/LOCKED, until ``deadline``.

    For the waits SQLite's busy handler does not cover (switching the journal
    mode of a file others are opening, ``BEGIN IMMEDIATE`` past the busy
    timeout). Past ``deadline`` (``time.monotonic()``) the last busy error is
    raised; any other error at once. ``on_first_wait`` runs once, before the
    first retry (to log that we wait). ``busy`` says which errors mean "try
    again" (SQLite's busy and locked codes by default; a lock file's
    ``BlockingIOError`` for the runner's).
    """
    waited = False
    while True:
        try:
            return action()
        except Exception as exc:  # sqlite3's or sqlcipher3's OperationalError
            if not busy(exc) or time.monotonic() >= deadline:
                raise
            if not waited and on_first_wait is not None:
                on_first_wait()
            waited = True
            time.sleep(interval)
