"""Foreign keys around a table rebuild: off before ``BEGIN``, checked before ``COMMIT``.

Owns switching enforcement off for a file that drops, renames or rebuilds
tables (``PRAGMA foreign_keys`` only changes outside a transaction, and with
it on, dropping a parent deletes every ``ON DELETE CASCADE`` child), putting
it back whatever happened, and checking only the tables the file touched
(found by SQLite's authorizer, trigger programs included) and the tables
that reference them. Does not decide which files need it (plan.py does).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator

from ..errors import ForeignKeyViolationError, MigrationError
from ..sqlite_facts import quote_identifier

Authorizer = Callable[[int, str | None, str | None, str | None, str | None], int]


@contextlib.contextmanager
def foreign_keys_off(db: sqlite3.Connection, wanted: bool) -> Iterator[None]:
    """Switch enforcement off for the block (outside any transaction), then restore it."""
    if not wanted:
        yield
        return
    with foreign_keys_restored(db) as was_on:
        if was_on:
            db.execute("PRAGMA foreign_keys=OFF")
            if db.execute("PRAGMA foreign_keys").fetchone()[0] != 0:
                raise MigrationError("could not switch foreign-key enforcement off")
        yield


@contextlib.contextmanager
def foreign_keys_restored(db: sqlite3.Connection) -> Iterator[bool]:
    """Put foreign-key enforcement back to what it was when the block began."""
    was_on = bool(db.execute("PRAGMA foreign_keys").fetchone()[0])
    try:
        yield was_on
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.execute(f"PRAGMA foreign_keys={'ON' if was_on else 'OFF'}")


def touched_tables_collector(touched: set[str]) -> Authorizer:
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


def check_foreign_keys(db: sqlite3.Connection, name: str, touched: set[str], label: str) -> None:
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
            f"{more}. Nothing of it was applied to {label}. Delete or fix those rows in the "
            f"migration, or copy the parent rows before dropping or rebuilding their table.",
            name=name,
            violations=violations[:20],
        )
