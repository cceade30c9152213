"""The exception tree of circuitforge_core.db.

Every error this package raises on its own account derives from ``DBError``.
Errors from SQL that callers run on their own connections stay ``sqlite3``
errors: we translate only at our own boundaries (opening a file, running a
migration), always chaining the original with ``raise ... from exc``.

    DBError
    ├── OpenError                  (also sqlite3.OperationalError) a database file cannot be
    │                              opened as asked (.reason says why)
    ├── EncryptionUnavailableError a key was given but encryption cannot be used
    ├── TransactionError           transaction() was misused (block ended it)
    ├── PoolTimeoutError           (also TimeoutError) no connection free in time
    ├── PoolClosedError            the pool or registry was closed, or the file is being dropped
    │   └── QuiescedError              the file is quiesced (being moved, restored, compacted)
    ├── PlacedElsewhereError       (also LookupError) the user lives on another host
    ├── NoDatabaseError            (also LookupError) no request database and no default
    ├── UnsafePathError            (also ValueError) a user id or sub-path could leave the root,
    │                              or the whole path is too long for SQLite
    ├── SettingsError              (also ValueError) an environment variable cannot be used
    ├── SQLiteLibraryError         (also RuntimeError) the SQLite asked for cannot run this process
    ├── StartupError               check_startup found problems; .problems lists each
    ├── BackupError                a backup could not be written (DEST left as it was)
    ├── ExporterUnavailableError   (also ImportError) a metrics exporter's library is missing
    ├── ReplicationError           Litestream could not do what was asked
    │   ├── LitestreamNotFoundError    (also FileNotFoundError) no litestream binary to run
    │   ├── ControlSocketError         (also ConnectionError) the daemon is not there, or refused
    │   ├── ReplicaNotFoundError       (also LookupError) the replica holds no copy of that file
    │   └── RestoreError               a restore failed; the target was left as it was
    └── MigrationError             a migration cannot be planned or applied
        ├── MigrationSourceError       the folder or a file cannot be read
        ├── MigrationNameError         (also ValueError) a new migration's name cannot be used
        ├── MigrationRefusedError      a file breaks a rule; nothing ran
        ├── MigrationModifiedError     an applied file was edited afterwards
        ├── MigrationFailedError       a statement failed; the file rolled back
        ├── ForeignKeyViolationError   the file left dangling references
        └── BaselineRefusedError       the schema is not what the files to baseline build

Each message says what happened, to which file, and what to do next.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Literal

#: Why a database file did not open: ``OpenError.reason``. A fixed set, so that
#: callers can branch on it instead of on the wording of a message.
OpenReason = Literal[
    "missing",  # the file, or the folder it should be in, does not exist
    "not_a_file",  # a folder (or no file name at all) where a database file was expected
    "permission",  # the service user may not read or write the file, or its folder
    "read_only",  # the file system holding it is mounted read-only
    "disk_full",  # no room left (or no inodes) on the file system holding it
    "path_too_long",  # its full path is longer than SQLite (or the file system) takes
    "not_a_database",  # not an SQLite database; or encrypted, and no key was given
    "wrong_key",  # a key was given, and it does not decrypt the file
    "not_encrypted",  # a key was given for a plain (unencrypted) database
    "damaged",  # an SQLite database, but what must be read to open it is corrupt
    "in_use",  # another connection or process holds it, for longer than we may wait
    "unsupported",  # the file system cannot give what the file needs (WAL mode)
    "other",  # anything else; the message says what SQLite reported
]


class DBError(Exception):
    """Base class of every error raised by circuitforge_core.db itself."""


class OpenError(DBError, sqlite3.OperationalError):
    """A database file cannot be opened the way it was asked for.

    ``path`` is the file; ``reason`` (an ``OpenReason``) says why, for code
    that must tell a wrong key from a damaged file without reading the message.
    Also an ``sqlite3.OperationalError`` (so a ``DatabaseError``), which is
    what the first circuitforge_core.db raised here: products that degrade
    gracefully with ``except sqlite3.OperationalError`` keep doing so.
    """

    def __init__(
        self, path: str | os.PathLike[str], message: str, *, reason: OpenReason = "other"
    ) -> None:
        self.path = os.fspath(path)
        self.reason: OpenReason = reason
        super().__init__(message)


class EncryptionUnavailableError(DBError):
    """A key was given, but this install cannot open encrypted databases."""


class TransactionError(DBError):
    """A transaction() block ended its own transaction, breaking atomicity."""


class PoolTimeoutError(DBError, TimeoutError):
    """Every connection the pool may open was busy for the whole wait.

    ``path`` is the database file (None when the process-wide cap of a
    registry was the limit), ``limit`` the number of connections that were
    all busy and ``timeout`` the seconds waited.
    """

    def __init__(self, message: str, *, path: str | None, limit: int, timeout: float) -> None:
        self.path = path
        self.limit = limit
        self.timeout = timeout
        super().__init__(message)


class PoolClosedError(DBError):
    """A connection was asked of a pool or registry that is closed, or of a file being dropped."""


class QuiescedError(PoolClosedError):
    """New connections to this file are refused while it is quiesced (a move, a restore).

    ``path`` is the file. Map it to 503 with ``Retry-After`` in a web app.
    """

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class PlacedElsewhereError(DBError, LookupError):
    """The placement says another host owns this user: the file is not opened here.

    ``path`` is the file, ``host`` the owner the product's directory named.
    """

    def __init__(self, message: str, *, path: str, host: str) -> None:
        self.path = path
        self.host = host
        super().__init__(message)


class NoDatabaseError(DBError, LookupError):
    """No database was chosen for this request or thread, and there is no default to use."""


class UnsafePathError(DBError, ValueError):
    """A user id or product sub-path was refused: it could leave or confuse the data root.

    Also a per-user path that SQLite could never open (longer than it takes).

    ``value`` is the refused text.
    """

    def __init__(self, message: str, *, value: str) -> None:
        self.value = value
        super().__init__(message)


class SettingsError(DBError, ValueError):
    """An environment variable the package reads holds a value it cannot use."""


class SQLiteLibraryError(DBError, RuntimeError):
    """The SQLite library the process was asked to run on (``CF_DB_SQLITE``) cannot be used.

    Raised while ``circuitforge_core.db`` is first imported: pysqlite3 is not
    installed, or the standard library's ``sqlite3`` was imported before, so
    switching now would leave two SQLite copies in the process. Not an
    ``ImportError``, so that no ``try: import ... except ImportError`` fallback
    hides it.
    """


class StartupError(DBError):
    """``check_startup`` found the database setup unusable; ``problems`` says each thing wrong.

    The message lists them all, so one failed start shows everything to fix.
    """

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"the app cannot use its database setup ({count} problem{'s' if count != 1 else ''}); "
            f"fix {'these' if count != 1 else 'this'} and start it again:\n{listed}"
        )


class BackupError(DBError):
    """A backup could not be written; its destination was left as it was.

    ``path`` is the destination. ``problems`` holds what the integrity check
    of the copy reported, when that is why (the database itself is damaged);
    it is empty for every other reason.
    """

    def __init__(self, message: str, *, path: str, problems: list[str] | None = None) -> None:
        self.path = path
        self.problems = list(problems or [])
        super().__init__(message)


class ReplicationError(DBError):
    """Replication (the Litestream sidecar, a restore, an erasure) could not do what was asked.

    ``path`` is the database file or socket concerned, when there is one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class LitestreamNotFoundError(ReplicationError, FileNotFoundError):
    """No ``litestream`` binary was found where it was looked for."""


class ControlSocketError(ReplicationError, ConnectionError):
    """Litestream's control socket cannot be reached, or the daemon refused a request.

    ``path`` is the socket; ``status`` the daemon's HTTP status when it answered
    (None when nothing answered).
    """

    def __init__(self, message: str, *, path: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message, path=path)


class ReplicaNotFoundError(ReplicationError, LookupError):
    """The replica holds no copy of the database asked for (never replicated, or erased)."""


class RestoreError(ReplicationError):
    """A restore did not complete; the database it was to replace was left as it was."""


class MigrationError(DBError):
    """A migration cannot be planned or applied.

    ``name`` is the migration file concerned, when there is one.
    """

    def __init__(self, message: str, *, name: str | None = None) -> None:
        self.name = name
        super().__init__(message)


class MigrationSourceError(MigrationError):
    """The migrations folder or one of its files cannot be read."""


class MigrationNameError(MigrationError, ValueError):
    """A new migration cannot take the name asked for: unsafe, taken, or out of numbers.

    ``name`` is the existing file that already has the name, when that is why.
    """


class MigrationRefusedError(MigrationError):
    """A file breaks a rule that makes it unsafe to run; nothing of it ran.

    ``line`` is the 1-based line of the offending statement, when there is one.
    """

    def __init__(self, message: str, *, name: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(message, name=name)


class MigrationModifiedError(MigrationError):
    """A migration that was already applied has been edited since."""


class MigrationFailedError(MigrationError):
    """A statement of a migration failed; everything the file did was undone.

    ``line`` is where the failing statement starts, ``statement`` its text and
    ``sqlite_message`` SQLite's own words.
    """

    def __init__(
        self,
        message: str,
        *,
        name: str,
        line: int,
        statement: str,
        sqlite_message: str,
    ) -> None:
        self.line = line
        self.statement = statement
        self.sqlite_message = sqlite_message
        super().__init__(message, name=name)


class ForeignKeyViolationError(MigrationError):
    """A migration would leave rows whose foreign keys point at nothing.

    ``violations`` holds ``(table, rowid, parent_table)`` triples, at most a
    handful of them, as reported by ``PRAGMA foreign_key_check``.
    """

    def __init__(
        self, message: str, *, name: str, violations: list[tuple[str, int | None, str]]
    ) -> None:
        self.violations = violations
        super().__init__(message, name=name)


class ExporterUnavailableError(DBError, ImportError):
    """A metrics exporter was asked for, but its library (an extra) is not installed."""


class BaselineRefusedError(MigrationError):
    """A database's schema is not what the files up to a baseline build; nothing was recorded.

    ``differences`` holds the first ``SchemaDifference``s found (empty when the
    files themselves could not be built).
    """

    def __init__(self, message: str, *, name: str, differences: Sequence[object]) -> None:
        self.differences = list(differences)
        super().__init__(message, name=name)
