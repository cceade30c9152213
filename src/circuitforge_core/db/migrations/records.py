"""The ``_migrations`` table, in whatever layout a database has it.

Owns reading the rows (the old runner's two columns or ours), adopting an
old table in place (``checksum`` and ``duration_ms`` added, checksums of the
files present recorded once), and writing the rows: the one that records an
applied file, a checksum replaced after review and files marked applied
without running (repair.py decides when; these only write). Does not decide
what to apply (plan.py) or take the write lock for anything but adoption
(locking.py has the lock).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import MigrationModifiedError
from .folder import MigrationFile
from .locking import immediate

#: The table that records applied migrations.
MIGRATIONS_TABLE = "_migrations"
#: The columns ours adds to the old runner's ``(name, applied_at)``.
BOOKKEEPING_COLUMNS = {"checksum": "TEXT", "duration_ms": "REAL"}


@dataclass(frozen=True, slots=True)
class Record:
    """One row of ``_migrations``: when SQLite recorded it, and the file's checksum then."""

    applied_at: str | None
    checksum: str | None


def _columns(db: sqlite3.Connection) -> set[str]:
    """The column names of ``_migrations``; empty when there is no such table."""
    return {row[1] for row in db.execute("PRAGMA table_info(_migrations)")}


def read_records(db: sqlite3.Connection) -> tuple[dict[str, Record], bool]:
    """The rows of ``_migrations`` whatever its layout, and whether it has our columns.

    A missing table reads as no rows and no columns. Only reads, so it works
    on a read-only connection.
    """
    columns = _columns(db)
    if not columns:
        return {}, False
    selected = ", ".join(
        column if column in columns else f"NULL AS {column}"
        for column in ("name", "applied_at", "checksum")
    )
    records = {
        name: Record(applied_at, checksum)
        for name, applied_at, checksum in db.execute(f"SELECT {selected} FROM _migrations")
    }
    return records, columns.issuperset(BOOKKEEPING_COLUMNS)


def recorded_in_order(db: sqlite3.Connection) -> list[tuple[str, str | None]]:
    """``(name, checksum)`` of every recorded migration, in the order they were applied.

    Rows are inserted as files are applied, so rowid order is that order
    (``VACUUM`` may renumber rowids, but keeps their order). The old layout
    reads with no checksums; a missing table as no rows.
    """
    columns = _columns(db)
    if not columns:
        return []
    checksum = "checksum" if "checksum" in columns else "NULL"
    return [
        (str(name), stored)
        for name, stored in db.execute(f"SELECT name, {checksum} FROM _migrations ORDER BY rowid")
    ]


def needs_adoption(
    records: dict[str, Record], has_columns: bool, files: Iterable[MigrationFile]
) -> bool:
    """True until ``_migrations`` has our columns and every row with a file has a checksum."""
    if not has_columns:
        return True
    return any(records.get(file.name, Record(None, "")).checksum is None for file in files)


def adopt(db: sqlite3.Connection, files: Iterable[MigrationFile], deadline: float) -> None:
    """Create ``_migrations``, or bring an old runner's table up to date, in place.

    Runs once per database: afterwards a call with nothing pending writes
    nothing. Rows the old runner left without a checksum get the checksum of
    the file as it is now.
    """
    with immediate(db, deadline):
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations ("
            "name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP, "
            "checksum TEXT, duration_ms REAL)"
        )
        columns = _columns(db)
        for column, sql_type in BOOKKEEPING_COLUMNS.items():
            if column not in columns:
                db.execute(f"ALTER TABLE _migrations ADD COLUMN {column} {sql_type}")
        db.executemany(
            "UPDATE _migrations SET checksum = ? WHERE name = ? AND checksum IS NULL",
            [(file.checksum, file.name) for file in files],
        )


def already_applied(db: sqlite3.Connection, file: MigrationFile, label: str) -> bool:
    """Whether another caller recorded ``file`` meanwhile (looked up under the lock).

    Raises ``MigrationModifiedError`` when it was recorded from other text;
    ``label`` names the database in that message.
    """
    recorded, checksum = recorded_checksum(db, file.name)
    if not recorded:
        return False
    if checksum is not None and checksum != file.checksum:
        raise MigrationModifiedError(
            f"migration {file.name} was applied to {label} by another process from a different "
            f"version of the file. Make every process run the same migrations folder.",
            name=file.name,
        )
    return True


def record_applied(db: sqlite3.Connection, file: MigrationFile, started: float) -> None:
    """Insert the row for ``file``, inside the transaction that applied it."""
    db.execute(
        "INSERT INTO _migrations (name, checksum, duration_ms) VALUES (?, ?, ?)",
        (file.name, file.checksum, round((time.perf_counter() - started) * 1000, 3)),
    )


def recorded_checksum(db: sqlite3.Connection, name: str) -> tuple[bool, str | None]:
    """Whether ``name`` is recorded, and its checksum (None for the old runner's rows)."""
    row = db.execute("SELECT checksum FROM _migrations WHERE name = ?", (name,)).fetchone()
    return (False, None) if row is None else (True, row[0])


def replace_checksum(db: sqlite3.Connection, name: str, checksum: str) -> None:
    """Record ``checksum`` for the applied ``name``, inside the caller's transaction."""
    db.execute("UPDATE _migrations SET checksum = ? WHERE name = ?", (checksum, name))


def record_unrun(db: sqlite3.Connection, file: MigrationFile) -> None:
    """Record ``file`` as applied without running it (``duration_ms`` stays NULL, which says so)."""
    db.execute(
        "INSERT INTO _migrations (name, checksum, duration_ms) VALUES (?, ?, NULL)",
        (file.name, file.checksum),
    )
