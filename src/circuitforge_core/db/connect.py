"""get_db: open one SQLite file as a hardened connection.

Owns the connection-open sequence and the choice of every pragma, each one
a small named step below with the reason for it. Does not own transactions
(transaction.py), migrations (migrations.py), pooling (pool/), the keyed open
of an encrypted file (cipher.py) or what an open failure is called
(open_errors.py).

Transaction control is pinned to the same behaviour on every supported
Python: ``isolation_level="IMMEDIATE"`` with, on 3.12+, ``autocommit`` held at
``LEGACY_TRANSACTION_CONTROL`` (pysqlite3, the bundled SQLite, knows no
other). No transaction is open after connect (so
``PRAGMA foreign_keys`` and the WAL switch work), and the implicit transaction
that Python opens before an INSERT/UPDATE/DELETE is ``BEGIN IMMEDIATE``: it
takes the write lock up front, so a second writer waits on the busy timeout
instead of failing with SQLITE_BUSY mid-transaction. ``commit()``,
``rollback()`` and ``with db:`` keep working as products expect.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, cast

from . import bundled_sqlite, cipher, sqlite_facts, wal_reset
from .cipher import Key
from .errors import OpenError
from .open_errors import Access, cannot_create, open_failed, too_long, unopenable
from .sqlite_facts import blob_through_open_blob

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_BUSY_TIMEOUT = sqlite_facts.DEFAULT_BUSY_TIMEOUT
DEFAULT_CACHE_SIZE_KIB = 8192
DEFAULT_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

# Where the module has it (the standard library's on 3.12+), pin the legacy
# transaction control explicitly: its default is announced to change, and
# autocommit=False would keep a transaction open from connect on, silently
# ignoring PRAGMA foreign_keys and refusing WAL. pysqlite3 (the bundled SQLite)
# has no autocommit at all: legacy control is its only mode.
_TRANSACTION_CONTROL: dict[str, Any] = {}
if hasattr(sqlite3, "LEGACY_TRANSACTION_CONTROL"):
    _TRANSACTION_CONTROL["autocommit"] = sqlite3.LEGACY_TRANSACTION_CONTROL


class Connection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that remembers which file it opened, and how.

    ``path`` is the absolute path of the database file, ``readonly`` whether it
    was opened read-only and ``busy_timeout`` the seconds a writer waits for
    the lock. Everything else is the standard connection; on pysqlite3 (the
    bundled SQLite), ``blobopen`` is added under the standard library's name.
    """

    path: str
    readonly: bool
    busy_timeout: float

    if not hasattr(sqlite3.Connection, "blobopen"):  # pysqlite3 (the bundled SQLite)

        def blobopen(
            self,
            table: str,
            column: str,
            row: int,
            /,
            *,
            readonly: bool = False,
            name: str = "main",
        ) -> sqlite3.Blob:
            """The standard library's name for pysqlite3's ``open_blob``."""
            blob: sqlite3.Blob = blob_through_open_blob(
                self, table, column, row, readonly=readonly, name=name
            )
            return blob


def get_db(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    cache_size_kib: int = DEFAULT_CACHE_SIZE_KIB,
    mmap_size: int = 0,
    journal_size_limit: int = DEFAULT_JOURNAL_SIZE_LIMIT,
    synchronous: str = "NORMAL",
    factory: type[Connection] = Connection,
    key: Key | None = None,
    create: bool = True,
) -> Connection:
    """Open the SQLite database at ``path``, creating it and its folders if missing.

    The connection is in WAL mode (checked), enforces foreign keys, waits up
    to ``busy_timeout`` seconds for a lock, and may be handed between threads
    (never used by two at once). ``readonly=True`` opens an existing file
    read-only and never creates one; ``create=False`` opens an existing file
    read-write and never creates it nor its folders (a file deleted meanwhile
    raises ``OpenError`` with reason ``missing``, never comes back empty).
    ``factory`` is the ``Connection`` subclass
    to make (the pool passes one that tracks its cursors); with a key, its
    behaviour must come from mixin classes, which are put on top of the
    encrypted connection class instead. Raises ``OpenError``
    naming the path when the file cannot be opened as a database.

    With ``key`` (a passphrase ``str`` or a raw 32-byte key, see cipher.py)
    the file is opened through SQLCipher (``pip install
    'circuitforge-core[sqlcipher]'``), encrypted, with the same pragmas; the
    connection is then a ``sqlcipher3`` connection with the same methods and
    attributes, though not a ``sqlite3.Connection``. A wrong key raises
    ``OpenError``; a missing driver ``EncryptionUnavailableError``, before
    anything is written.
    """
    _log_library_version_once()
    fspath = _checked_path(path)
    deadline = time.monotonic() + busy_timeout
    access: Access = "ro" if readonly else ("rwc" if create else "rw")
    if key is None:
        db = _connect(fspath, access=access, busy_timeout=busy_timeout, factory=factory)
    else:
        db = _connect_encrypted(
            fspath, key, access=access, busy_timeout=busy_timeout, factory=factory
        )
    try:
        if not readonly and not os.access(fspath, os.W_OK):
            # SQLite opens a write-protected file read-only without a word: refuse
            # now, not at the first write.
            raise unopenable(fspath, PermissionError(fspath), access="rw")
        db.path = fspath
        db.readonly = readonly
        db.busy_timeout = busy_timeout
        script = _pragma_script(
            synchronous, journal_size_limit, cache_size_kib, mmap_size, readonly
        )
        try:
            _ensure_wal(db, fspath, deadline)
            db.executescript(script)
        except db.DatabaseError as exc:  # sqlite3's or sqlcipher3's
            raise open_failed(fspath, exc, access=access) from exc
    except BaseException:
        db.close()
        raise
    return db


@functools.lru_cache(maxsize=32)
def _pragma_script(
    synchronous: str, journal_size_limit: int, cache_size_kib: int, mmap_size: int, readonly: bool
) -> str:
    """The per-connection pragmas as one script, built once per combination of settings."""
    pragmas = [
        _synchronous(synchronous),
        _foreign_keys(),
        _journal_size_limit(journal_size_limit),
        _cache_size(cache_size_kib),
        _mmap_size(mmap_size),
        _temp_store(),
    ]
    if readonly:
        pragmas.append(_query_only())
    return "".join(pragmas)


# -- the pragmas, one reason each ------------------------------------------------


def _ensure_wal(db: Connection, path: str, deadline: float) -> None:
    """WAL: readers never block the writer and a commit needs no fsync.

    The mode is stored in the file, so it is only switched when not already
    on. Several processes opening a brand-new file at once can get "database is
    locked" while one of them switches; that is retried until the busy
    timeout. https://sqlite.org/wal.html
    """

    def switch() -> str:
        mode: str = db.execute("PRAGMA journal_mode").fetchone()[0]
        if mode == "wal" or db.readonly:
            return "wal"
        switched: str = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        return switched

    try:
        mode = sqlite_facts.retry_while_busy(switch, deadline, interval=0.005)
    except db.OperationalError as exc:  # sqlite3's or sqlcipher3's
        if not sqlite_facts.is_busy(exc):
            raise
        raise OpenError(
            path,
            f"{path}: could not switch the database to WAL mode: it stayed locked by "
            f"another connection for the whole busy timeout. Retry, or raise "
            f"busy_timeout.",
            reason="in_use",
        ) from exc
    if mode != "wal":
        raise OpenError(
            path,
            f"{path}: SQLite refused WAL mode (journal mode stays {mode!r}). WAL needs a "
            f"local filesystem with shared memory; keep the database on a local disk, "
            f"not a network share.",
            reason="unsupported",
        )


def _synchronous(level: str) -> str:
    """NORMAL: in WAL mode it never corrupts, and fsyncs only at checkpoints.

    A power loss may roll back the last commits; an application crash loses
    nothing. Pass ``synchronous="FULL"`` where every commit must survive power
    loss. https://sqlite.org/pragma.html#pragma_synchronous
    """
    if level.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {level!r}")
    return f"PRAGMA synchronous={level.upper()};"


def _foreign_keys() -> str:
    """ON: SQLite ships with foreign keys unenforced, for compatibility only.

    https://sqlite.org/foreignkeys.html#fk_enable
    """
    return "PRAGMA foreign_keys=ON;"


def _journal_size_limit(size: int) -> str:
    """64 MiB (Rails 8): a checkpoint rewinds the WAL but never shrinks it.

    Without a limit one large transaction leaves a large -wal file on disk.
    https://sqlite.org/pragma.html#pragma_journal_size_limit
    """
    return f"PRAGMA journal_size_limit={int(size)};"


def _cache_size(kib: int) -> str:
    """8 MiB per connection by default (Rails 8 uses 2000 pages, about as much).

    The page cache is per connection, so pools of many files pass less and let
    the operating system's page cache do the sharing.
    https://sqlite.org/pragma.html#pragma_cache_size
    """
    return f"PRAGMA cache_size={-int(kib)};"


def _mmap_size(size: int) -> str:
    """0 by default: an I/O error on a memory-mapped file kills the process.

    A SIGBUS takes down every request the process serves, for a read speed-up
    only; Rails' 128 MiB is an opt-in here. https://sqlite.org/mmap.html
    """
    return f"PRAGMA mmap_size={int(size)};"


def _temp_store() -> str:
    """MEMORY: sorts and temporary indexes stay off the disk.

    https://sqlite.org/pragma.html#pragma_temp_store
    """
    return "PRAGMA temp_store=MEMORY;"


def _query_only() -> str:
    """Read-only connections refuse writes at the SQL level too."""
    return "PRAGMA query_only=ON;"


# -- opening the file --------------------------------------------------------------


def _checked_path(path: str | os.PathLike[str]) -> str:
    """The absolute path of a database file, refusing in-memory names."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    raw = os.fspath(path)
    if raw in ("", ":memory:"):
        raise OpenError(
            raw,
            f"get_db needs the path of a database file, not {raw!r}: in-memory databases "
            f"cannot use WAL. Use a file in a temporary folder instead.",
            reason="not_a_file",
        )
    return os.path.abspath(raw)


def _connect(
    path: str, *, access: Access, busy_timeout: float, factory: type[Connection] = Connection
) -> Connection:
    options: dict[str, Any] = {
        "timeout": busy_timeout,
        "isolation_level": "IMMEDIATE",
        "check_same_thread": False,
        "factory": factory,
        **_TRANSACTION_CONTROL,
    }
    db: Connection | None = None
    if access == "rwc" and os.path.isdir(os.path.dirname(path)):
        # The common case first, and the cheapest: an existing file, or a new one
        # in an existing folder; it fails at once if the path is a folder. Only
        # with the folder in place: when SQLite cannot open a file read-write it
        # silently retries read-only, and a file that another process creates in
        # between would leave us a read-only connection.
        with contextlib.suppress(sqlite3.Error):
            db = cast(Connection, sqlite3.connect(path, **options))
    if db is None:
        _prepare_path(path, access=access)
        uri = Path(path).as_uri() + f"?mode={access}"
        try:
            db = cast(Connection, sqlite3.connect(uri, uri=True, **options))
        except sqlite3.Error as exc:
            raise unopenable(path, exc, access=access) from exc
    return db


def _connect_encrypted(
    path: str,
    key: Key,
    *,
    access: Access,
    busy_timeout: float,
    factory: type[Connection] = Connection,
) -> Connection:
    """Open through ``cipher.open_keyed``, which applies the key before any other statement.

    The key and the driver are checked before any folder is created, so a bad
    key or a missing driver leaves no trace. sqlcipher3 (0.6.4) has no
    ``autocommit`` keyword: its only mode is the legacy transaction control we
    pin on the standard library.
    """
    cipher.check_key(key)
    cipher.load_driver(path)
    mixins = _mixins(factory)
    _prepare_path(path, access=access)
    db = cipher.open_keyed(
        path,
        key,
        mode=access,
        timeout=busy_timeout,
        isolation_level="IMMEDIATE",
        check_same_thread=False,
        mixins=mixins,
    )
    # Typed as Connection: same methods and attributes (see get_db's docstring).
    return cast(Connection, db)


def _mixins(factory: type[Connection]) -> tuple[type, ...]:
    """The mixin classes that give ``factory`` its behaviour, for an encrypted twin.

    An encrypted connection cannot inherit from ``sqlite3.Connection`` (the
    two C types do not combine), so only what the factory gets from classes
    outside that hierarchy can come along; methods defined on the factory
    itself would be lost, and are refused.
    """
    if factory is Connection:
        return ()
    if not (isinstance(factory, type) and issubclass(factory, Connection)):
        raise TypeError(f"factory must be a subclass of Connection, not {factory!r}")
    chain = [cls for cls in factory.__mro__ if issubclass(cls, Connection)]
    own = [
        f"{cls.__name__}.{name}"
        for cls in chain
        if cls is not Connection
        for name, value in vars(cls).items()
        if callable(value) or isinstance(value, property | classmethod | staticmethod)
    ]
    if own:
        raise TypeError(
            f"factory {factory.__name__} defines {', '.join(own)} itself, which cannot be "
            f"carried over to an encrypted (sqlcipher3) connection; move them into a mixin "
            f"class that does not derive from sqlite3.Connection (as PooledConnection does)."
        )
    return tuple(
        cls
        for cls in factory.__mro__
        if cls is not object and not issubclass(cls, sqlite3.Connection)
    )


def _prepare_path(path: str, *, access: Access) -> None:
    """Refuse names SQLite cannot take, folders, and missing files not to be made; make folders."""
    refused = too_long(path)
    if refused is not None:
        raise refused
    if os.path.isdir(path):
        raise OpenError(
            path, f"{path} is a folder; pass the path of a database file.", reason="not_a_file"
        )
    if access != "rwc":
        if not os.path.exists(path):
            asked = "readonly=True" if access == "ro" else "create=False"
            raise OpenError(
                path,
                f"{path} does not exist; {asked} never creates a database.",
                reason="missing",
            )
    else:
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise cannot_create(path, exc.filename or parent, exc) from exc


_version_logged = threading.Event()


def _log_library_version_once() -> None:
    """Log the SQLite library in use once, and warn (once) if it has the WAL-reset bug."""
    if _version_logged.is_set():
        return
    _version_logged.set()
    logger.info(
        "SQLite library %s, from %s", sqlite3.sqlite_version, bundled_sqlite.describe(sqlite3)
    )
    wal_reset.warn_once("sqlite3", sqlite3.sqlite_version, module_name=sqlite3.__name__)
