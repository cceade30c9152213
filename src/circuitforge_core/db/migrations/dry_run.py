"""The dry run that runs: every pending file applied to a scratch copy of the database.

Owns the copy and the rehearsal on it. The copy is one consistent snapshot
taken through SQLite's backup API into a private temporary folder (under
``TMPDIR``), encrypted under the same key when the database is; a database
that does not exist yet gets an empty scratch database instead, and is not
created. The real database is only read, by a connection chosen so that the
files beside it stay as they were found: no ``-wal``/``-shm`` left behind
where there were none, no checkpoint into the file. On the copy each pending
file runs through the runner's own code for one file (its transaction, the
foreign-key checks, the old runner's recovery, no-transaction files
statement by statement), so a runtime error such as a misspelt table shows
up with its file and line, as ``migrate`` would report it. The copy is
deleted afterwards. Does not judge files (plan.py) or say what the result
means to a person (views.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cipher import Key, open_keyed
from ..connect import get_db
from ..errors import MigrationError
from ..open_errors import Access, open_failed, unopenable
from ..sqlite_facts import DEFAULT_BUSY_TIMEOUT, SQLITE_FULL, SQLITE_IOERR, primary_code
from . import connection_state
from .columns import SkippedColumn
from .folder import MigrationFile
from .locking import DEFAULT_LOCK_TIMEOUT
from .plan import FilePlan
from .records import adopt, needs_adoption, read_records
from .runner import Target, apply_file, sqlite_errors

#: Companions of a database whose presence means a connection is (or was) at work on it.
_IN_USE_SUFFIXES = ("-wal", "-journal")
#: Settings of the caller's connection the copy does not take over: the rehearsal must write.
_NOT_MIRRORED = frozenset({"query_only"})


@dataclass(frozen=True, slots=True)
class Scratch:
    """The copy a dry run works on: its connection and file, and how to name the original."""

    db: Any  # sqlite3.Connection, or sqlcipher3's for an encrypted copy
    path: str
    label: str


@contextlib.contextmanager
def scratch_copy(
    source: sqlite3.Connection | str | os.PathLike[str], key: Key | None, label: str
) -> Iterator[Scratch]:
    """A private copy of ``source`` (a connection or the path of a database) for the block.

    A path that does not exist gives an empty database; nothing is created at
    that path. An encrypted connection cannot be copied without its key
    (``TypeError``: pass its path and ``key=``).
    """
    folder = tempfile.mkdtemp(prefix="cf-db-dry-run-")  # 0700: only we can read the copy
    try:
        path = os.path.join(folder, "copy.db")
        if isinstance(source, str | os.PathLike):
            if os.path.lexists(source):
                _copy_file(os.path.abspath(source), path, key)
        else:
            if not isinstance(source, sqlite3.Connection):
                raise TypeError(
                    "a dry run that executes the files cannot copy an encrypted connection "
                    "(its key is not known here); pass the database's path and key= instead"
                )
            if source.in_transaction:
                raise MigrationError(
                    f"a dry run needs a connection with no open transaction, as run_migrations "
                    f"does, and the one to {label} has one; commit or roll back first."
                )
            with contextlib.closing(sqlite3.connect(path)) as copy:
                source.backup(copy)
        scratch = get_db(path, key=key)
        try:
            if not isinstance(source, str | os.PathLike):
                _mirror_settings(source, scratch)
            yield Scratch(scratch, path, label)
        finally:
            scratch.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _copy_file(path: str, copy_path: str, key: Key | None) -> None:
    """One snapshot of the database at ``path`` into ``copy_path``, through the backup API."""
    access: Access = "rw" if _leaves_no_trace_read_write(path) else "ro"
    source = _open_source(path, key, access)
    try:
        copy = _open_copy(copy_path, key)
        try:
            source.execute("BEGIN")  # deferred: the first read takes the snapshot
            try:
                try:
                    source.execute("SELECT count(*) FROM sqlite_master").fetchall()
                except source.DatabaseError as exc:
                    raise open_failed(path, exc, access=access) from exc
                source.backup(copy)
            finally:
                source.execute("ROLLBACK")
        finally:
            copy.close()
    finally:
        source.close()


def _leaves_no_trace_read_write(path: str) -> bool:
    """Whether a read-write connection that only reads leaves the files as it found them.

    A read-only connection to a WAL database creates ``-wal`` and ``-shm``
    and, unlike a read-write one, never removes them when it closes last. A
    read-write one would instead checkpoint a ``-wal`` it found into the
    database file, or roll back a ``-journal`` it found: then read-only is
    the one that changes nothing.
    """
    if any(os.path.lexists(path + suffix) for suffix in _IN_USE_SUFFIXES):
        return False
    folder = os.path.dirname(path) or "."
    return os.access(path, os.R_OK | os.W_OK) and os.access(folder, os.W_OK | os.X_OK)


def _open_source(path: str, key: Key | None, access: Access) -> Any:
    if key is not None:
        return open_keyed(path, key, mode=access, isolation_level=None)
    try:
        return sqlite3.connect(
            Path(path).as_uri() + f"?mode={access}",
            uri=True,
            isolation_level=None,
            timeout=DEFAULT_BUSY_TIMEOUT,
        )
    except sqlite3.Error as exc:
        raise unopenable(path, exc, access=access) from exc


def _open_copy(copy_path: str, key: Key | None) -> Any:
    """The empty copy; an encrypted source needs a copy keyed alike for the backup API."""
    if key is None:
        return sqlite3.connect(copy_path)
    return open_keyed(copy_path, key, mode="rwc")


def _mirror_settings(source: sqlite3.Connection, scratch: Any) -> None:
    """Give the copy the caller's connection settings, so the files run there as they would."""
    wanted = connection_state.settings(source)
    for name in _NOT_MIRRORED:
        wanted.pop(name, None)
    connection_state.apply_settings(scratch, wanted)
    foreign_keys = source.execute("PRAGMA foreign_keys").fetchone()[0]
    scratch.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")


# -- the rehearsal -------------------------------------------------------------------


@dataclass(slots=True)
class Rehearsal:
    """What applying the pending files to the copy did.

    ``seconds`` each file that ran took there; ``failed`` the file that
    failed and its error (the run stops there, as ``migrate`` would);
    ``stopped_at`` the refused file the rehearsal could not run past;
    ``skipped`` the ``ADD COLUMN`` statements the old runner's recovery
    skipped.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    failed: tuple[str, MigrationError] | None = None
    stopped_at: str | None = None
    skipped: list[SkippedColumn] = field(default_factory=list)


def rehearse(scratch: Scratch, files: list[MigrationFile], plans: Iterable[FilePlan]) -> Rehearsal:
    """Apply ``plans`` (the pending files, in order) to the copy, as ``run_migrations`` would.

    Stops at the first file the planner refuses or that fails. Raises a
    ``MigrationError`` when the copy itself cannot be written (the
    temporary folder is full), which says nothing about the files.
    """
    result = Rehearsal()
    records, has_columns = read_records(scratch.db)
    deadline = time.monotonic() + DEFAULT_LOCK_TIMEOUT
    if needs_adoption(records, has_columns, files):
        with sqlite_errors(
            scratch.db, "could not set up _migrations in a copy of", scratch.label, None
        ):
            adopt(scratch.db, files, deadline)
    target = Target(
        scratch.db, scratch.path, scratch.label, deadline, on_skip=result.skipped.append, copy=True
    )
    for plan in plans:
        if plan.refusals:
            result.stopped_at = plan.file.name
            break
        try:
            seconds = apply_file(target, plan)
        except MigrationError as exc:
            _raise_if_the_copy_failed(exc)
            result.failed = (plan.file.name, exc)
            break
        if seconds is not None:
            result.seconds[plan.file.name] = seconds
    return result


def _raise_if_the_copy_failed(exc: MigrationError) -> None:
    cause = exc.__cause__
    if cause is not None and primary_code(cause) in (SQLITE_FULL, SQLITE_IOERR):
        raise MigrationError(
            f"the dry run could not write its copy of the database in {tempfile.gettempdir()}: "
            f"{cause}. Nothing was changed. Point TMPDIR at a folder with room for a copy of the "
            f"database and run the dry run again.",
            name=exc.name,
        ) from exc
