"""Applying migrations: ``run_migrations``, one file at a time, each one atomic.

Owns the order of a run (shortcut, read, adopt, compare, plan, apply) and
how one file is applied. One ``BEGIN IMMEDIATE`` transaction holds every
statement of the file and the row that records it, so a file is either
fully applied and recorded or not there at all. The write lock doubles as
the migration lock between threads and processes: inside the transaction
the row is looked up again, and a file another caller applied meanwhile is
skipped. A ``-- cf-db: no-transaction`` file runs statement by statement
under the lock file instead, and is recorded only once every statement
succeeded. Does not print, parse arguments or judge files (plan.py does).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable

from ..cipher import Key
from ..connect import get_db
from ..errors import (
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationRefusedError,
)
from ..sqlsplit import Statement
from . import shortcut
from .folder import MigrationFile, MigrationsDir, read_migrations
from .foreign_keys import (
    check_foreign_keys,
    foreign_keys_off,
    foreign_keys_restored,
    touched_tables_collector,
)
from .locking import database_path, file_lock, immediate
from .plan import FilePlan, compare, named, out_of_order, pending_files, plan_file, short
from .records import adopt, already_applied, needs_adoption, read_records, record_applied

logger = logging.getLogger("circuitforge_core.db")

DEFAULT_LOCK_TIMEOUT = 600.0

Starting = Callable[[str], None] | None
Applied = Callable[[str, float], None] | None


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
    file and leaves earlier files applied. Safe to call from many threads and
    processes at once: each file is applied exactly once, and a caller waits
    up to ``lock_timeout`` seconds for another caller's migration to finish.
    A repeated call on an unchanged database and folder costs two ``stat``
    calls, a folder listing and one ``PRAGMA schema_version``. For progress displays,
    ``on_start(name)`` is called once this caller holds the lock and is about
    to run a file, and ``on_applied(name, seconds)`` after it committed.

    ``db`` is a connection with no open transaction, or the path of a
    database file: that is opened with ``get_db(db, key=key)`` only after the
    folder was read (a bad folder creates no database) and closed at the end.
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


def _run(
    db: sqlite3.Connection,
    migrations_dir: MigrationsDir,
    files: list[MigrationFile] | None,
    lock_timeout: float,
    on_start: Starting,
    on_applied: Applied,
) -> list[str]:
    """``run_migrations`` on a connection; ``files`` when the caller read them already."""
    if db.in_transaction:
        raise MigrationError(
            "run_migrations needs a connection with no open transaction; commit or roll back first."
        )
    db_path = database_path(db)
    memory_key = shortcut.cache_key(db_path, migrations_dir)
    signature = shortcut.signature(db, db_path, migrations_dir)
    if shortcut.is_up_to_date(memory_key, signature):
        return []

    deadline = time.monotonic() + lock_timeout
    if files is None:
        files = read_migrations(migrations_dir)
    records, has_columns = read_records(db)
    if needs_adoption(records, has_columns, files):
        adopt(db, files, deadline)
        records, _ = read_records(db)
    comparisons = compare(files, records)
    _refuse_modified(named(comparisons, "modified"), migrations_dir)
    for name in named(comparisons, "missing"):
        logger.warning(
            "migration %s is recorded as applied in %s but its file is gone; never delete an "
            "applied migration",
            name,
            db_path or "the database",
        )
    plans = [plan_file(file) for file in pending_files(comparisons)]
    for name, latest in out_of_order(comparisons):
        logger.warning(
            "migration %s sorts before the already applied %s (two branches merged?); "
            "applying it now",
            name,
            latest,
        )

    applied = []
    for plan in plans:
        seconds = _apply(db, plan, db_path, deadline, on_start)
        if seconds is not None:
            applied.append(plan.file.name)
            if on_applied is not None:
                on_applied(plan.file.name, seconds)
    if signature is not None:
        shortcut.remember_up_to_date(memory_key, shortcut.signature(db, db_path, migrations_dir))
    return applied


def _refuse_modified(modified: list[str], migrations_dir: MigrationsDir) -> None:
    if modified:
        raise MigrationModifiedError(
            f"applied migration{'s' if len(modified) > 1 else ''} {', '.join(modified)} in "
            f"{migrations_dir} changed since {'they were' if len(modified) > 1 else 'it was'} "
            f"applied; nothing was run. Restore the applied text (git history has it) and put "
            f"the change in a new file.",
            name=modified[0],
        )


# -- one file ------------------------------------------------------------------------


def _apply(
    db: sqlite3.Connection,
    plan: FilePlan,
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
    db: sqlite3.Connection, plan: FilePlan, deadline: float, on_start: Starting
) -> float | None:
    name = plan.file.name
    with foreign_keys_off(db, plan.foreign_keys_off), immediate(db, deadline):
        if already_applied(db, plan.file):
            return None
        started = _starting(name, on_start)
        run_in_transaction(db, plan)
        record_applied(db, plan.file, started)
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


def run_in_transaction(db: sqlite3.Connection, plan: FilePlan) -> None:
    """Run a file's statements in the open transaction, then check the keys it may have broken.

    The caller owns the transaction and has switched foreign keys off when
    the plan asks for it: the runner commits what this did together with the
    file's row; a dry run that executes files would roll it back instead.
    """
    name = plan.file.name
    touched: set[str] = set()
    if plan.foreign_keys_off:
        db.set_authorizer(touched_tables_collector(touched))
    try:
        for statement in plan.statements:
            _execute(db, name, statement)
    finally:
        if plan.foreign_keys_off:
            db.set_authorizer(None)
    if plan.foreign_keys_off:
        check_foreign_keys(db, name, touched)


def _apply_outside_transaction(
    db: sqlite3.Connection, plan: FilePlan, db_path: str | None, deadline: float, on_start: Starting
) -> float | None:
    name = plan.file.name
    with file_lock(db_path, deadline), foreign_keys_restored(db):
        if already_applied(db, plan.file):
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
        with immediate(db, deadline):
            if not already_applied(db, plan.file):
                record_applied(db, plan.file, started)
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
            f"migration {name}, line {statement.line}: {exc}\n    {short(statement.sql, 200)}\n"
            f"{note.strip()} Fix the file and run the migrations again.",
            name=name,
            line=statement.line,
            statement=statement.sql,
            sqlite_message=str(exc),
        ) from exc
    if not outside_transaction and not db.in_transaction:
        raise MigrationRefusedError(
            f"migration {name}, line {statement.line}: `{short(statement.sql)}` ended the "
            f"transaction the runner wraps the file in; what ran before it is committed. Remove "
            f"transaction control from the file.",
            name=name,
            line=statement.line,
        )
