"""Applying migrations: ``run_migrations``, one file at a time, each one atomic.

Owns the order of a run (shortcut, read, adopt, compare, plan, apply) and
how one file is applied. One ``BEGIN IMMEDIATE`` transaction holds every
statement of the file and the row that records it, so a file is either
fully applied and recorded or not there at all. The write lock doubles as
the migration lock between threads and processes: inside the transaction
the row is looked up again, and a file another caller applied meanwhile is
skipped. A ``-- cf-db: no-transaction`` file runs statement by statement
under the lock file instead, and is recorded only once every statement
succeeded. After each file, what it changed of the connection is put back
(connection_state.py). Every error out of ``run_migrations`` is a
``MigrationError`` naming the database and the file: SQLite's own errors are
translated here, with what to do for a full disk, a read-only file and the
like. Does not print, parse arguments or judge files (plan.py does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .. import metrics
from ..cipher import Key
from ..connect import get_db
from ..errors import (
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationRefusedError,
)
from ..sqlite_facts import (
    SQLITE_CANTOPEN,
    SQLITE_CORRUPT,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_IOERR_SHMMAP,
    SQLITE_IOERR_SHMOPEN,
    SQLITE_IOERR_SHMSIZE,
    SQLITE_NOTADB,
    SQLITE_READONLY,
    error_code,
    primary_code,
    reports_extended_codes,
)
from ..sqlsplit import Statement
from . import connection_state, shortcut
from .columns import SkippedColumn, already_added
from .folder import MigrationFile, MigrationsDir, read_migrations
from .foreign_keys import (
    check_foreign_keys,
    foreign_keys_off,
    foreign_keys_restored,
    touched_tables_collector,
)
from .locking import DEFAULT_LOCK_TIMEOUT, database_path, file_lock, immediate
from .plan import FilePlan, compare, named, out_of_order, pending_files, plan_file, short
from .records import adopt, already_applied, needs_adoption, read_records, record_applied

logger = logging.getLogger("circuitforge_core.db")

Starting = Callable[[str], None] | None
Applied = Callable[[str, float], None] | None
Skipping = Callable[[SkippedColumn], None]


def run_migrations(
    db: sqlite3.Connection | str | os.PathLike[str],
    migrations_dir: MigrationsDir,
    *,
    key: Key | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    on_start: Starting = None,
    on_applied: Applied = None,
) -> list[str]:
    """Apply the folder's ``*.sql`` files not yet applied, in filename order.

    Returns the names it applied. Each file and its ``_migrations`` row commit
    together or not at all; a failure raises a ``MigrationError`` naming the
    database and the file and leaves earlier files applied. Safe to call from
    many threads and processes at once: each file is applied exactly once,
    and a caller waits up to ``lock_timeout`` seconds for another caller's
    migration to finish. A repeated call on an unchanged database and folder
    costs two ``stat`` calls, a folder listing and one ``PRAGMA schema_version``.
    For progress displays, ``on_start(name)`` is called once this caller holds
    the lock and is about to run a file, and ``on_applied(name, seconds)``
    after it committed.

    ``db`` is a connection with no open transaction, or the path of a
    database file: that is opened with ``get_db(db, key=key)`` only after the
    folder was read (a bad folder creates no database) and closed at the end.
    A read-only connection is fine while nothing is pending.
    """
    if isinstance(db, str | os.PathLike):
        files = read_migrations(migrations_dir)
        connection = get_db(db, key=key)
        try:
            return _run(connection, migrations_dir, files, lock_timeout, on_start, on_applied)
        finally:
            connection.close()
    if key is not None:
        raise TypeError("run_migrations: key= goes with a database path, not a connection")
    return _run(db, migrations_dir, None, lock_timeout, on_start, on_applied)


def label(db_path: str | None) -> str:
    """How messages name a database: its path, or what it is when it has none."""
    return db_path or "the in-memory database"


def _run(
    db: sqlite3.Connection,
    migrations_dir: MigrationsDir,
    files: list[MigrationFile] | None,
    lock_timeout: float,
    on_start: Starting,
    on_applied: Applied,
) -> list[str]:
    """``run_migrations`` on a connection; ``files`` when the caller read them already."""
    reading = "could not read the migrations recorded in"
    with sqlite_errors(db, reading, None, None, migrations_dir):
        db_path = database_path(db)
        in_transaction = db.in_transaction
    where = label(db_path)
    if in_transaction:
        raise MigrationError(
            f"run_migrations needs a connection with no open transaction, and the one to "
            f"{where} has one; commit or roll back first."
        )
    memory_key = shortcut.cache_key(db_path, migrations_dir)
    with sqlite_errors(db, reading, where, None, migrations_dir):
        signature = shortcut.signature(db, db_path, migrations_dir)
    if shortcut.is_up_to_date(memory_key, signature):
        return []

    deadline = time.monotonic() + lock_timeout
    if files is None:
        files = read_migrations(migrations_dir)
    with sqlite_errors(db, reading, where, None, migrations_dir):
        records, has_columns = read_records(db)
        comparisons = compare(files, records)
        pending = pending_files(comparisons)
        adopting = needs_adoption(records, has_columns, files)
        if (pending or adopting) and _is_read_only(db):
            _refuse_read_only(pending, where)
            # Nothing to apply: the next writable call adopts the table (so no shortcut).
            adopting = False
            signature = None
    if adopting:
        first = pending[0].name if pending else None
        with sqlite_errors(db, "could not set up _migrations in", where, first):
            adopt(db, files, deadline)
            records, _ = read_records(db)
        comparisons = compare(files, records)
    _refuse_modified(named(comparisons, "modified"), migrations_dir, where)
    for name in named(comparisons, "missing"):
        logger.warning(
            "migration %s is recorded as applied in %s but its file is gone; never delete an "
            "applied migration",
            name,
            where,
        )
    plans = [plan_file(file, where) for file in pending]
    for name, latest in out_of_order(comparisons):
        logger.warning(
            "migration %s sorts before the already applied %s in %s (two branches merged?); "
            "applying it now",
            name,
            latest,
            where,
        )

    target = Target(db, db_path, where, deadline, on_start)
    applied = []
    for plan in plans:
        try:
            seconds = apply_file(target, plan)
        except MigrationError:
            if metrics.enabled:
                metrics.increment(metrics.MIGRATION_FAILURES)
            raise
        if seconds is not None:
            applied.append(plan.file.name)
            if on_applied is not None:
                on_applied(plan.file.name, seconds)
    if signature is not None:
        with sqlite_errors(db, reading, where, None, migrations_dir):
            after = shortcut.signature(db, db_path, migrations_dir)
        shortcut.remember_up_to_date(memory_key, after)
    return applied


def _is_read_only(db: sqlite3.Connection) -> bool:
    """Opened with ``readonly=True``, or ``PRAGMA query_only`` on."""
    if getattr(db, "readonly", False) is True:
        return True
    return bool(db.execute("PRAGMA query_only").fetchone()[0])


def _refuse_read_only(pending: list[MigrationFile], where: str) -> None:
    if pending:
        names = ", ".join(file.name for file in pending[:3]) + (", ..." if len(pending) > 3 else "")
        raise MigrationError(
            f"{where} is open read-only, so {len(pending)} pending migration"
            f"{'s' if len(pending) != 1 else ''} ({names}) cannot be applied; nothing was "
            f"changed. Run the migrations on a read-write connection (get_db(path)), before "
            f"opening the database read-only.",
            name=pending[0].name,
        )


def _refuse_modified(modified: list[str], migrations_dir: MigrationsDir, where: str) -> None:
    if modified:
        raise MigrationModifiedError(
            f"applied migration{'s' if len(modified) > 1 else ''} {', '.join(modified)} in "
            f"{migrations_dir} changed since {'they were' if len(modified) > 1 else 'it was'} "
            f"applied to {where}; nothing was run. Restore the applied text (git history has "
            f"it) and put the change in a new file.",
            name=modified[0],
        )


# -- SQLite's errors, translated ---------------------------------------------------

_ADVICE = {
    SQLITE_FULL: "The disk is full. Free space on it and run the migrations again.",
    SQLITE_READONLY: "The database cannot be written (a read-only connection, file or file "
    "system): run the migrations with a read-write connection to a writable file.",
    SQLITE_IOERR: "The disk reported an I/O error: check it (dmesg, free space) and run the "
    "migrations again.",
    SQLITE_CORRUPT: "The database looks damaged: run `cf-db check` on it and restore it from a "
    "backup if that fails.",
    SQLITE_NOTADB: "The file is not an SQLite database (or is encrypted and no key was given).",
    SQLITE_CANTOPEN: "SQLite could not open a file it needs beside the database (its -wal or "
    "-shm, or a temporary file): check the folder's permissions and free space.",
}


_SHM_FAILURES = frozenset({SQLITE_IOERR_SHMOPEN, SQLITE_IOERR_SHMSIZE, SQLITE_IOERR_SHMMAP})


def environment_advice(exc: BaseException) -> str | None:
    """What to do when SQLite failed because of the disk or the file, not the SQL."""
    if error_code(exc) in _SHM_FAILURES:
        return (
            "SQLite could not create or grow the -shm file beside the database (the index of "
            "its -wal): the disk is probably full. Free space on it and run the migrations again."
        )
    if error_code(exc) == SQLITE_IOERR and not reports_extended_codes(exc):
        return (  # pysqlite3 and sqlcipher3 do not say which I/O error it was
            "SQLite reported an I/O error without saying which: the disk is probably full "
            "(the -shm or -wal beside the database could not grow), or failing. Free space on "
            "it, check it (dmesg), and run the migrations again."
        )
    code = primary_code(exc)
    return None if code is None else _ADVICE.get(code)


@contextlib.contextmanager
def sqlite_errors(
    db: sqlite3.Connection,
    doing: str,
    where: str | None,
    name: str | None,
    folder: MigrationsDir | None = None,
) -> Iterator[None]:
    """Turn SQLite's errors in the block into a ``MigrationError`` naming the database and file.

    Our own errors pass through. ``doing`` says what failed ("could not set up
    _migrations in"), ``where`` is the database's label and ``name`` the file
    concerned; when there is none yet (the records could not be read), the
    files of ``folder`` are named instead.
    """
    try:
        yield
    except MigrationError:
        raise
    except db.Error as exc:  # sqlite3's or sqlcipher3's
        what = f" (before applying {name})" if name is not None else _files_of(folder)
        advice = environment_advice(exc) or (
            "Run the migrations again; if it keeps failing, run `cf-db check` on the database."
        )
        raise MigrationError(
            f"{doing} {where or 'the database'}{what}: SQLite says: {exc}. Nothing was "
            f"applied. {advice}",
            name=name,
        ) from exc


def _files_of(folder: MigrationsDir | None) -> str:
    """The folder's files, for an error that came before the pending ones were known."""
    if folder is None:
        return ""
    try:
        names = [file.name for file in read_migrations(folder)]
    except MigrationError:
        return ""
    if not names:
        return ""
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f" (so none of the migrations of {folder} could run: {listed})"


# -- one file ------------------------------------------------------------------------


def _log_skip(skipped: SkippedColumn) -> None:
    logger.warning("%s", skipped.message())


@dataclass(frozen=True, slots=True)
class Target:
    """Where files are applied, and how messages and callbacks talk about it.

    ``path`` is the file behind ``db`` (the no-transaction lock file goes
    beside it), ``label`` how messages name the database, ``deadline`` when
    waiting for the write lock ends (``time.monotonic()``). ``on_skip`` hears
    of each ``ADD COLUMN`` skipped because its column was already there
    (logged as a warning unless told otherwise). ``copy`` says that ``db`` is
    a dry run's copy of the database ``label`` names.
    """

    db: sqlite3.Connection
    path: str | None
    label: str
    deadline: float
    on_start: Starting = None
    on_skip: Skipping = _log_skip
    copy: bool = False


def apply_file(target: Target, plan: FilePlan) -> float | None:
    """Apply one file: its duration in seconds, or None if another caller applied it first.

    What the file changed of the connection is put back afterwards, whatever
    happened. Raises a ``MigrationError`` naming the file and the database.
    """
    name = plan.file.name
    db = target.db
    with (
        sqlite_errors(db, f"could not apply migration {name} to", target.label, None),
        connection_state.kept(db, plan.changes, name, target.label),
    ):
        if plan.file.no_transaction:
            started = _apply_outside_transaction(target, plan)
        else:
            started = _apply_in_transaction(target, plan)
    if started is None:
        return None
    seconds = time.perf_counter() - started
    if target.copy:
        logger.info(
            "ran migration %s on a copy of %s in %.1f ms (dry run)",
            name,
            target.label,
            seconds * 1000,
        )
    else:
        if metrics.enabled:
            metrics.observe(metrics.MIGRATION, seconds)
        logger.info("applied migration %s to %s in %.1f ms", name, target.label, seconds * 1000)
    return seconds


def _starting(name: str, on_start: Starting) -> float:
    """Report that ``name`` is about to run; the time it started."""
    if on_start is not None:
        on_start(name)
    return time.perf_counter()


def _apply_in_transaction(target: Target, plan: FilePlan) -> float | None:
    db, name = target.db, plan.file.name
    with foreign_keys_off(db, plan.foreign_keys_off), immediate(db, target.deadline, name):
        if already_applied(db, plan.file, target.label):
            return None
        started = _starting(name, target.on_start)
        run_in_transaction(target, plan)
        _record(target, plan, started)
        try:
            db.execute("COMMIT")
        except db.Error as exc:  # sqlite3's or sqlcipher3's
            raise _failure(target, plan, Statement("COMMIT", 0), exc, "could not commit") from exc
    return started


def run_in_transaction(target: Target, plan: FilePlan) -> None:
    """Run a file's statements in the open transaction, then check the keys it may have broken.

    The caller owns the transaction and has switched foreign keys off when
    the plan asks for it; the runner commits what this did together with the
    file's row.
    """
    db = target.db
    touched: set[str] = set()
    if plan.foreign_keys_off:
        db.set_authorizer(touched_tables_collector(touched))
    try:
        _run_statements(target, plan, outside_transaction=False)
    finally:
        if plan.foreign_keys_off:
            db.set_authorizer(None)
    if plan.foreign_keys_off:
        check_foreign_keys(db, plan.file.name, touched, target.label)


def _record(target: Target, plan: FilePlan, started: float) -> None:
    """The file's ``_migrations`` row, inside the transaction that applied it."""
    try:
        record_applied(target.db, plan.file, started)
    except target.db.Error as exc:
        statement = Statement("INSERT INTO _migrations ...", 0)
        raise _failure(target, plan, statement, exc, "could not be recorded") from exc


def _apply_outside_transaction(target: Target, plan: FilePlan) -> float | None:
    db, name = target.db, plan.file.name
    with file_lock(target.path, target.deadline, name), foreign_keys_restored(db):
        if already_applied(db, plan.file, target.label):
            return None
        started = _starting(name, target.on_start)
        saved_isolation = db.isolation_level
        db.isolation_level = None  # statement by statement, as the file asks
        try:
            try:
                _run_statements(target, plan, outside_transaction=True)
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
        with immediate(db, target.deadline, name):
            if not already_applied(db, plan.file, target.label):
                _record(target, plan, started)
    return started


def _run_statements(target: Target, plan: FilePlan, *, outside_transaction: bool) -> None:
    """Each statement of the plan, but an ``ADD COLUMN`` whose column is already there."""
    db, name = target.db, plan.file.name
    added_columns = plan.added_columns or (None,) * len(plan.statements)
    for statement, added in zip(plan.statements, added_columns, strict=True):
        if added is not None:
            skipped = already_added(db, name, statement, added, target.label)
            if skipped is not None:
                target.on_skip(skipped)
                continue
        try:
            db.execute(statement.sql).close()
        except db.Error as exc:  # sqlite3's or sqlcipher3's
            raise _failure(target, plan, statement, exc, "failed") from exc
        if not outside_transaction and not db.in_transaction:
            raise MigrationRefusedError(
                f"migration {name}, line {statement.line}: `{short(statement.sql)}` ended the "
                f"transaction the runner wraps the file in; what ran before it is committed to "
                f"{target.label}. Remove transaction control from the file.",
                name=name,
                line=statement.line,
            )


def _failure(
    target: Target, plan: FilePlan, statement: Statement, exc: BaseException, what: str
) -> MigrationFailedError:
    """The error for a statement of ``plan`` that SQLite refused, naming file and database."""
    name = plan.file.name
    if plan.file.no_transaction:
        kept = (
            f"This file runs outside a transaction: the statements before this one stay applied "
            f"to {target.label}, so make the file safe to run again before retrying."
        )
    else:
        kept = f"Nothing of this file was applied to {target.label}."
    advice = environment_advice(exc) or "Fix the file and run the migrations again."
    where = f"line {statement.line}" if statement.line else what
    return MigrationFailedError(
        f"migration {name}, {where}: {exc}\n    {short(statement.sql, 200)}\n{kept} {advice}",
        name=name,
        line=statement.line,
        statement=statement.sql,
        sqlite_message=str(exc),
    )
