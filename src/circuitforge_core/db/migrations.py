"""Forward-only SQL migrations: discover -> plan -> apply, and status.

Owns the ``_migrations`` bookkeeping table and the rules a migration file
must follow. Does not print, parse arguments, or open connections.

How a file is applied: one ``BEGIN IMMEDIATE`` transaction holds every
statement of the file and the row that records it, so a file is either fully
applied and recorded or not there at all. The write lock doubles as the
migration lock between threads and processes: inside the transaction the
row is looked up again, and a file another caller applied meanwhile is
skipped. ``PRAGMA foreign_keys`` only changes outside a transaction, so a
file that drops, renames or rebuilds tables gets enforcement switched off
before ``BEGIN`` and a ``PRAGMA foreign_key_check`` of the tables it touched
before ``COMMIT``; enforcement comes back afterwards, whatever happened.

``_migrations`` keeps the layout products already have,
``(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP)``, and
gains ``checksum`` and ``duration_ms`` columns in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from .errors import (
    ForeignKeyViolationError,
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationRefusedError,
    MigrationSourceError,
)
from .sqlite_facts import is_busy, quote_identifier, retry_while_busy
from .sqlsplit import Statement, split_sql

try:  # POSIX only; elsewhere no-transaction files are not serialised across processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("circuitforge_core.db")

MigrationsDir = str | os.PathLike[str] | Traversable
State = Literal["applied", "pending", "modified", "missing"]
Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]

NO_TRANSACTION_MARKER = "-- cf-db: no-transaction"
DEFAULT_LOCK_TIMEOUT = 600.0

_BOOKKEEPING_COLUMNS = {"checksum": "TEXT", "duration_ms": "REAL"}

# Statements SQLite refuses, or silently ignores, inside a transaction.
_NEEDS_NO_TRANSACTION_PRAGMAS = {
    "JOURNAL_MODE",
    "SYNCHRONOUS",
    "PAGE_SIZE",
    "AUTO_VACUUM",
    "WAL_CHECKPOINT",
}


# -- discover ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrationFile:
    """One ``.sql`` file, normalised: no BOM, ``\\n`` line endings.

    ``checksum`` is the SHA-256 of the normalised text, so a change of line
    endings or BOM alone is not an edit.
    """

    name: str
    text: str
    checksum: str

    @property
    def no_transaction(self) -> bool:
        first_line = self.text.split("\n", 1)[0].strip()
        return " ".join(first_line.split()).lower() == NO_TRANSACTION_MARKER


def read_migrations(migrations_dir: MigrationsDir) -> list[MigrationFile]:
    """The ``*.sql`` files of the folder, in filename order; other files are ignored."""
    folder = _as_traversable(migrations_dir)
    try:
        entries = [entry for entry in folder.iterdir() if entry.name.endswith(".sql")]
    except (OSError, ValueError) as exc:
        raise MigrationSourceError(
            f"cannot list the migrations folder {folder}: {exc}. Check the path passed to "
            f"run_migrations."
        ) from exc
    files = []
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.is_file():
            continue
        files.append(_normalised(entry.name, _read_bytes(entry, folder), folder))
    return files


def _read_bytes(entry: Traversable, folder: Traversable) -> bytes:
    """The raw bytes of one migration file, naming it if they cannot be read."""
    try:
        return entry.read_bytes()
    except OSError as exc:
        raise MigrationSourceError(
            f"cannot read migration {entry.name} in {folder}: {exc}.", name=entry.name
        ) from exc


def _as_traversable(migrations_dir: MigrationsDir) -> Traversable:
    if isinstance(migrations_dir, str | os.PathLike):
        folder = Path(migrations_dir)
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise MigrationSourceError(
                f"the migrations folder {folder} {what}. Pass the folder that holds the "
                f"product's NNN_name.sql files."
            )
        return folder
    return migrations_dir


def _normalised(name: str, raw: bytes, folder: Traversable) -> MigrationFile:
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MigrationSourceError(
            f"migration {name} in {folder} is not valid UTF-8 (byte {exc.start}, line {line}). "
            f"Save it as UTF-8.",
            name=name,
        ) from exc
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise MigrationSourceError(
            f"migration {name} in {folder} contains a NUL byte (line {line}), which SQLite "
            f"cannot take in SQL text. Remove it; write char(0) or X'00' where a value needs one.",
            name=name,
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return MigrationFile(name, text, hashlib.sha256(text.encode("utf-8")).hexdigest())


# -- plan ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one file will run: its statements and whether FKs must be off."""

    file: MigrationFile
    statements: tuple[Statement, ...]
    foreign_keys_off: bool


def _plan(file: MigrationFile) -> _Plan:
    """Check a file against the rules and decide how to run it; runs nothing."""
    statements = split_sql(file.text)
    if file.no_transaction:
        return _Plan(file, tuple(statements), foreign_keys_off=False)
    kept: list[Statement] = []
    foreign_keys_off = False
    for statement in statements:
        head = statement.head(6)
        if _is_foreign_keys_pragma(head):
            # A no-op inside a transaction; we switch enforcement ourselves.
            foreign_keys_off = True
            continue
        if _needs_no_transaction(head):
            raise MigrationRefusedError(
                f"migration {file.name}, line {statement.line}: `{_short(statement.sql)}` cannot "
                f"run inside a transaction. Move it to a file of its own whose first line is "
                f"`{NO_TRANSACTION_MARKER}`.",
                name=file.name,
                line=statement.line,
            )
        if head[:2] == ("DROP", "TABLE") or (
            head[:2] == ("ALTER", "TABLE") and {"RENAME", "DROP"} & set(head[3:])
        ):
            foreign_keys_off = True
        kept.append(statement)
    kept = _without_wrapping_transaction(file, kept)
    return _Plan(file, tuple(kept), foreign_keys_off)


def _pragma(head: tuple[str, ...]) -> tuple[str, bool] | None:
    """For a PRAGMA statement: its name and whether it sets a value."""
    if head[:1] != ("PRAGMA",) or len(head) < 2:
        return None
    if len(head) >= 4 and head[2] == ".":  # PRAGMA schema.name
        return head[3], len(head) >= 5 and head[4] in {"=", "("}
    return head[1], len(head) >= 3 and head[2] in {"=", "("}


def _is_foreign_keys_pragma(head: tuple[str, ...]) -> bool:
    return _pragma(head) == ("FOREIGN_KEYS", True)


def _needs_no_transaction(head: tuple[str, ...]) -> bool:
    if head[:1] == ("VACUUM",):
        return True
    pragma = _pragma(head)
    if pragma is None:
        return False
    name, sets = pragma
    return name in _NEEDS_NO_TRANSACTION_PRAGMAS and (sets or name == "WAL_CHECKPOINT")


_BEGIN = {"BEGIN"}
_END = {"COMMIT", "END"}


def _without_wrapping_transaction(
    file: MigrationFile, statements: list[Statement]
) -> list[Statement]:
    """Drop a ``BEGIN ... COMMIT`` pair that wraps the whole file; refuse any other.

    Files written for the old ``executescript`` runner often wrap themselves
    in a transaction. Ours already does that, so the pair is redundant; a
    ``COMMIT`` or ``ROLLBACK`` anywhere else would split the file's atomicity.
    """
    if (
        len(statements) >= 2
        and statements[0].head(1)[0] in _BEGIN
        and statements[-1].head(1)[0] in _END
    ):
        statements = statements[1:-1]
    for statement in statements:
        head = statement.head(3)
        keyword = head[0]
        is_rollback_to = keyword == "ROLLBACK" and "TO" in head
        if keyword in _BEGIN | _END or (keyword == "ROLLBACK" and not is_rollback_to):
            raise MigrationRefusedError(
                f"migration {file.name}, line {statement.line}: `{_short(statement.sql)}` would "
                f"end or restart the transaction the runner wraps the file in. Remove it: each "
                f"file already runs in one transaction (SAVEPOINT/RELEASE are fine).",
                name=file.name,
                line=statement.line,
            )
    return statements


def _short(sql: str, limit: int = 80) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- bookkeeping ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    applied_at: str | None
    checksum: str | None


def _read_records(db: sqlite3.Connection) -> tuple[dict[str, _Record], bool]:
    """The rows of ``_migrations`` whatever its layout, and whether it has our columns.

    A missing table reads as no rows and no columns.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(_migrations)")}
    if not columns:
        return {}, False
    selected = ", ".join(
        column if column in columns else f"NULL AS {column}"
        for column in ("name", "applied_at", "checksum")
    )
    records = {
        name: _Record(applied_at, checksum)
        for name, applied_at, checksum in db.execute(f"SELECT {selected} FROM _migrations")
    }
    return records, columns.issuperset(_BOOKKEEPING_COLUMNS)


def _needs_adoption(
    records: dict[str, _Record], has_columns: bool, files: list[MigrationFile]
) -> bool:
    """True until ``_migrations`` has our columns and every row with a file has a checksum."""
    if not has_columns:
        return True
    return any(records.get(file.name, _Record(None, "")).checksum is None for file in files)


def _adopt(db: sqlite3.Connection, files: list[MigrationFile], deadline: float) -> None:
    """Create ``_migrations``, or bring an old runner's table up to date, in place.

    Runs once per database: afterwards a call with nothing pending writes
    nothing. Rows the old runner left without a checksum get the checksum of
    the file as it is now.
    """
    with _immediate(db, deadline):
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            "name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP, "
            "checksum TEXT, duration_ms REAL)"
        )
        columns = {row[1] for row in db.execute("PRAGMA table_info(_migrations)")}
        for column, sql_type in _BOOKKEEPING_COLUMNS.items():
            if column not in columns:
                db.execute(f"ALTER TABLE _migrations ADD COLUMN {column} {sql_type}")
        db.executemany(
            "UPDATE _migrations SET checksum = ? WHERE name = ? AND checksum IS NULL",
            [(file.checksum, file.name) for file in files],
        )


# -- apply ---------------------------------------------------------------------------


def run_migrations(
    db: sqlite3.Connection,
    migrations_dir: MigrationsDir,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    on_start: Callable[[str], None] | None = None,
    on_applied: Callable[[str, float], None] | None = None,
) -> list[str]:
    """Apply the folder's ``*.sql`` files not yet applied, in filename order.

    Returns the names it applied. Each file and its ``_migrations`` row commit
    together or not at all; a failure raises a ``MigrationError`` naming the
    file and leaves earlier files applied. Safe to call from many threads and
    processes at once: each file is applied exactly once, and a caller waits
    up to ``lock_timeout`` seconds for another caller's migration to finish.
    A repeated call on an unchanged database and folder costs two ``stat``
    calls, a folder listing and one ``PRAGMA schema_version``. For progress displays,
    ``on_start(name)`` is called once this caller holds the lock and is about
    to run a file, and ``on_applied(name, seconds)`` after it committed.
    """
    if db.in_transaction:
        raise MigrationError(
            "run_migrations needs a connection with no open transaction; commit or roll back first."
        )
    db_path = _database_path(db)
    cache_key = (db_path, _source_key(migrations_dir))
    signature = _signature(db, db_path, migrations_dir)
    if signature is not None and _up_to_date.get(cache_key) == signature:
        return []

    deadline = time.monotonic() + lock_timeout
    files = read_migrations(migrations_dir)
    records, has_columns = _read_records(db)
    if _needs_adoption(records, has_columns, files):
        _adopt(db, files, deadline)
        records, _ = _read_records(db)
    _check_unmodified(files, records, migrations_dir)
    _warn_missing(files, records, db_path)
    pending = [file for file in files if file.name not in records]
    plans = [_plan(file) for file in pending]
    _warn_out_of_order(pending, records, files)

    applied = []
    for plan in plans:
        seconds = _apply(db, plan, db_path, deadline, on_start)
        if seconds is not None:
            applied.append(plan.file.name)
            if on_applied is not None:
                on_applied(plan.file.name, seconds)
    if signature is not None:
        _remember_up_to_date(cache_key, _signature(db, db_path, migrations_dir))
    return applied


Starting = Callable[[str], None] | None


def _apply(
    db: sqlite3.Connection,
    plan: _Plan,
    db_path: str | None,
    deadline: float,
    on_start: Starting,
) -> float | None:
    """Apply one file: its duration in seconds, or None if another caller applied it first."""
    if plan.file.no_transaction:
        started = _apply_outside_transaction(db, plan, db_path, deadline, on_start)
    else:
        started = _apply_in_transaction(db, plan, deadline, on_start)
    if started is None:
        return None
    seconds = time.perf_counter() - started
    logger.info("applied migration %s in %.1f ms", plan.file.name, seconds * 1000)
    return seconds


def _starting(name: str, on_start: Starting) -> float:
    """Report that ``name`` is about to run; the time it started."""
    if on_start is not None:
        on_start(name)
    return time.perf_counter()


def _apply_in_transaction(
    db: sqlite3.Connection, plan: _Plan, deadline: float, on_start: Starting
) -> float | None:
    name = plan.file.name
    with _foreign_keys_off(db, plan.foreign_keys_off), _immediate(db, deadline):
        if _already_applied(db, plan.file):
            return None
        started = _starting(name, on_start)
        touched: set[str] = set()
        if plan.foreign_keys_off:
            db.set_authorizer(_touched_tables_collector(touched))
        try:
            for statement in plan.statements:
                _execute(db, name, statement)
        finally:
            if plan.foreign_keys_off:
                db.set_authorizer(None)
        if plan.foreign_keys_off:
            _check_foreign_keys(db, name, touched)
        _record(db, plan.file, started)
        try:
            db.execute("COMMIT")
        except db.Error as exc:  # sqlite3's or sqlcipher3's
            raise MigrationFailedError(
                f"migration {name} could not commit: {exc}. Nothing of it was applied; fix the "
                f"file and run the migrations again.",
                name=name,
                line=0,
                statement="COMMIT",
                sqlite_message=str(exc),
            ) from exc
    return started


def _apply_outside_transaction(
    db: sqlite3.Connection, plan: _Plan, db_path: str | None, deadline: float, on_start: Starting
) -> float | None:
    name = plan.file.name
    with _file_lock(db_path, deadline), _foreign_keys_restored(db):
        if _already_applied(db, plan.file):
            return None
        started = _starting(name, on_start)
        saved_isolation = db.isolation_level
        db.isolation_level = None  # statement by statement, as the file asks
        try:
            for statement in plan.statements:
                try:
                    _execute(db, name, statement, outside_transaction=True)
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            if db.in_transaction:
                db.execute("ROLLBACK")
                raise MigrationRefusedError(
                    f"migration {name} left a transaction open (a BEGIN without COMMIT); it was "
                    f"rolled back. Close every transaction the file opens.",
                    name=name,
                )
        finally:
            db.isolation_level = saved_isolation
        with _immediate(db, deadline):
            if not _already_applied(db, plan.file):
                _record(db, plan.file, started)
    return started


def _execute(
    db: sqlite3.Connection, name: str, statement: Statement, *, outside_transaction: bool = False
) -> None:
    try:
        db.execute(statement.sql).close()
    except db.Error as exc:  # sqlite3's or sqlcipher3's
        note = (
            " This file runs outside a transaction: the statements before this one stay "
            "applied, so make the file safe to run again before retrying."
            if outside_transaction
            else " Nothing of this file was applied."
        )
        raise MigrationFailedError(
            f"migration {name}, line {statement.line}: {exc}\n    {_short(statement.sql, 200)}\n"
            f"{note.strip()} Fix the file and run the migrations again.",
            name=name,
            line=statement.line,
            statement=statement.sql,
            sqlite_message=str(exc),
        ) from exc
    if not outside_transaction and not db.in_transaction:
        raise MigrationRefusedError(
            f"migration {name}, line {statement.line}: `{_short(statement.sql)}` ended the "
            f"transaction the runner wraps the file in; what ran before it is committed. Remove "
            f"transaction control from the file.",
            name=name,
            line=statement.line,
        )


def _already_applied(db: sqlite3.Connection, file: MigrationFile) -> bool:
    row = db.execute("SELECT checksum FROM _migrations WHERE name = ?", (file.name,)).fetchone()
    if row is None:
        return False
    if row[0] is not None and row[0] != file.checksum:
        raise MigrationModifiedError(
            f"migration {file.name} was applied by another process from a different version of "
            f"the file. Make every process run the same migrations folder.",
            name=file.name,
        )
    return True


def _record(db: sqlite3.Connection, file: MigrationFile, started: float) -> None:
    db.execute(
        "INSERT INTO _migrations (name, checksum, duration_ms) VALUES (?, ?, ?)",
        (file.name, file.checksum, round((time.perf_counter() - started) * 1000, 3)),
    )


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection, deadline: float) -> Iterator[None]:
    """A ``BEGIN IMMEDIATE`` transaction, waiting past the busy timeout up to ``deadline``.

    Commits if the block ends normally and the transaction is still open.
    """
    try:
        retry_while_busy(
            lambda: db.execute("BEGIN IMMEDIATE"),
            deadline,
            on_first_wait=lambda: logger.info(
                "waiting for another connection to release %s", _database_path(db)
            ),
        )
    except db.OperationalError as exc:  # sqlite3's or sqlcipher3's
        if not is_busy(exc):
            raise
        raise MigrationError(
            f"gave up waiting for the write lock on {_database_path(db)}: another "
            f"connection held it past the migration lock timeout. Find the process "
            f"holding it, or raise lock_timeout."
        ) from exc
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if db.in_transaction:
        db.execute("COMMIT")


# -- foreign keys --------------------------------------------------------------------


@contextlib.contextmanager
def _foreign_keys_off(db: sqlite3.Connection, wanted: bool) -> Iterator[None]:
    """Switch enforcement off for the block (outside any transaction), then restore it."""
    if not wanted:
        yield
        return
    with _foreign_keys_restored(db) as was_on:
        if was_on:
            db.execute("PRAGMA foreign_keys=OFF")
            if db.execute("PRAGMA foreign_keys").fetchone()[0] != 0:
                raise MigrationError("could not switch foreign-key enforcement off")
        yield


@contextlib.contextmanager
def _foreign_keys_restored(db: sqlite3.Connection) -> Iterator[bool]:
    """Put foreign-key enforcement back to what it was when the block began."""
    was_on = bool(db.execute("PRAGMA foreign_keys").fetchone()[0])
    try:
        yield was_on
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.execute(f"PRAGMA foreign_keys={'ON' if was_on else 'OFF'}")


def _touched_tables_collector(touched: set[str]) -> Authorizer:
    """An authorizer that records every table a statement (or its triggers) writes.

    SQLite calls the authorizer while it compiles each statement, trigger
    programs included, so this sees what SQLite itself will touch.
    """
    writes = {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_DROP_TABLE,
    }

    def authorize(
        action: int, arg1: str | None, arg2: str | None, _db: str | None, _source: str | None
    ) -> int:
        if action in writes and arg1:
            touched.add(arg1.lower())
        elif action == sqlite3.SQLITE_ALTER_TABLE and arg2:
            touched.add(arg2.lower())
        return sqlite3.SQLITE_OK

    return authorize


def _check_foreign_keys(db: sqlite3.Connection, name: str, touched: set[str]) -> None:
    """Fail if the touched tables, or tables that reference them, hold dangling keys.

    Only those tables are checked: a file that cannot break a reference into
    a big unrelated table never makes us scan it.
    """
    # One query for every table and what it references: schema only, no rows read.
    to_check: dict[str, None] = {}  # ordered set
    for table, parent in db.execute(
        'SELECT m.name, f."table" FROM sqlite_master AS m '
        "LEFT JOIN pragma_foreign_key_list(m.name) AS f "
        "WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'"
    ):
        if table.lower() in touched or (parent is not None and parent.lower() in touched):
            to_check[table] = None
    violations: list[tuple[str, int | None, str]] = []
    for table in to_check:
        for row in db.execute(f"PRAGMA foreign_key_check({quote_identifier(table)})"):
            violations.append((row[0], row[1], row[2]))
    if violations:
        sample = ", ".join(f"{t} rowid {r} -> {p}" for t, r, p in violations[:5])
        more = f" and {len(violations) - 5} more" if len(violations) > 5 else ""
        raise ForeignKeyViolationError(
            f"migration {name} would leave rows whose foreign keys point at nothing: {sample}"
            f"{more}. Nothing of it was applied. Delete or fix those rows in the migration, or "
            f"copy the parent rows before dropping or rebuilding their table.",
            name=name,
            violations=violations[:20],
        )


# -- concurrency helpers -------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(db_path: str | None, deadline: float) -> Iterator[None]:
    """Serialise no-transaction migrations across processes with a lock file.

    They cannot hold SQLite's write lock while they run, so ``<db>.migrate-lock``
    stands in for it.
    """
    if db_path is None or fcntl is None:
        yield
        return
    # Private like the database beside it (0600), whatever the umask.
    descriptor = os.open(db_path + ".migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    with open(descriptor, "r+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise MigrationError(
                        f"gave up waiting for {db_path}.migrate-lock: another process kept "
                        f"running a no-transaction migration past the lock timeout."
                    ) from None
                time.sleep(0.01)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _database_path(db: sqlite3.Connection) -> str | None:
    """The file behind the connection's main database, None for in-memory ones."""
    path = getattr(db, "path", None)  # ours, plain or encrypted (not a sqlite3.Connection)
    if isinstance(path, str):
        return path
    for _seq, schema, filename in db.execute("PRAGMA database_list"):
        if schema == "main":
            return str(filename) or None
    return None


# -- the repeated-call shortcut ------------------------------------------------------

# (database path, folder key) -> signature of both when they were last seen
# fully migrated. A hit means nothing can be pending: the folder lists the
# same entries and its modification time is the same (adding, removing or
# renaming a file, or an editor saving by rename, changes both), and the
# database is the same file (device, inode) with the same schema cookie
# (every DDL bumps it; a restored backup would not share it; checkpoints do
# not touch it). One stat per file would also see in-place edits, but costs
# more than the old runner's whole call; such an edit is caught by the next
# call that finds the folder changed, before anything new is applied.
_up_to_date: dict[tuple[str | None, str], object] = {}
_up_to_date_guard = threading.Lock()
_UP_TO_DATE_KEPT = 4096  # cloud mode: thousands of files; the oldest are forgotten first


def _remember_up_to_date(key: tuple[str | None, str], signature: object) -> None:
    with _up_to_date_guard:
        _up_to_date.pop(key, None)  # re-inserted last: the dict's order is the age
        _up_to_date[key] = signature
        while len(_up_to_date) > _UP_TO_DATE_KEPT:
            del _up_to_date[next(iter(_up_to_date))]


def _source_key(migrations_dir: MigrationsDir) -> str:
    if isinstance(migrations_dir, str | os.PathLike):
        return os.path.abspath(os.fspath(migrations_dir))
    return f"{type(migrations_dir).__qualname__}:{migrations_dir}"


def _signature(
    db: sqlite3.Connection, db_path: str | None, migrations_dir: MigrationsDir
) -> object | None:
    """What must stay the same for a previous 'nothing pending' to still hold."""
    if db_path is None:
        return None
    try:
        db_stat = os.stat(db_path)
        if not isinstance(migrations_dir, str | os.PathLike):
            folder: object = ()  # a package resource that is not a plain folder: immutable
        else:
            folder = (os.stat(migrations_dir).st_mtime_ns, tuple(os.listdir(migrations_dir)))
    except OSError:
        return None
    schema_version = db.execute("PRAGMA schema_version").fetchone()[0]
    return (db_stat.st_dev, db_stat.st_ino, schema_version, folder)


def _check_unmodified(
    files: list[MigrationFile], records: dict[str, _Record], migrations_dir: MigrationsDir
) -> None:
    modified = [
        file.name
        for file in files
        if file.name in records
        and records[file.name].checksum is not None
        and records[file.name].checksum != file.checksum
    ]
    if modified:
        raise MigrationModifiedError(
            f"applied migration{'s' if len(modified) > 1 else ''} {', '.join(modified)} in "
            f"{migrations_dir} changed since {'they were' if len(modified) > 1 else 'it was'} "
            f"applied; nothing was run. Restore the applied text (git history has it) and put "
            f"the change in a new file.",
            name=modified[0],
        )


def _warn_missing(
    files: list[MigrationFile], records: dict[str, _Record], db_path: str | None
) -> None:
    present = {file.name for file in files}
    for name in sorted(set(records) - present):
        logger.warning(
            "migration %s is recorded as applied in %s but its file is gone; never delete an "
            "applied migration",
            name,
            db_path or "the database",
        )


def _warn_out_of_order(
    pending: list[MigrationFile], records: dict[str, _Record], files: list[MigrationFile]
) -> None:
    applied_names = [file.name for file in files if file.name in records]
    if not applied_names:
        return
    latest = max(applied_names)
    for file in pending:
        if file.name < latest:
            logger.warning(
                "migration %s sorts before the already applied %s (two branches merged?); "
                "applying it now",
                file.name,
                latest,
            )


# -- status --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """The state of one migration, as ``migration_status`` reports it.

    ``applied_at`` is the UTC time SQLite recorded, None while pending.
    """

    name: str
    state: State
    applied_at: str | None


def migration_status(
    db: sqlite3.Connection, migrations_dir: MigrationsDir
) -> list[MigrationStatus]:
    """Every file and every recorded name with its state; never writes.

    Files come in filename order, then recorded names whose file is missing.
    """
    files = read_migrations(migrations_dir)
    records, _ = _read_records(db)
    statuses = []
    for file in files:
        record = records.get(file.name)
        if record is None:
            statuses.append(MigrationStatus(file.name, "pending", None))
        elif record.checksum is not None and record.checksum != file.checksum:
            statuses.append(MigrationStatus(file.name, "modified", record.applied_at))
        else:
            statuses.append(MigrationStatus(file.name, "applied", record.applied_at))
    present = {file.name for file in files}
    for name in sorted(set(records) - present):
        statuses.append(MigrationStatus(name, "missing", records[name].applied_at))
    return statuses
