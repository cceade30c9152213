"""The old runner's recovery, kept atomic: an ``ADD COLUMN`` whose column is already there.

The published runner ran each file with ``executescript``, which commits
statement by statement: a process killed in the middle of a file left some
of its ``ALTER TABLE ... ADD COLUMN`` statements committed and the file
unrecorded, and its next start ran the file again, skipping "duplicate
column name" errors. Products' test fixtures also create tables with a
column a later migration adds. This module owns what the runner does with
such a statement, inside the file's own transaction: look the column up in
the very table the statement names (``pragma_table_xinfo``, quoted names and
``schema.table`` included), and skip the statement when the column is
already what the file adds (declared type, NOT NULL and DEFAULT), or refuse
the file when it is not. SQLite's error text is never matched. Every other
statement, and every other error, is left to the runner.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..errors import MigrationRefusedError
from ..sqlite_facts import quote_identifier
from ..sqlsplit import Statement
from .plan import short
from .statements import AddColumn, ColumnDefinition, fold, same_definition

#: ``pragma_table_xinfo``'s ``hidden`` for generated columns (virtual, stored).
_GENERATED = (2, 3)


@dataclass(frozen=True, slots=True)
class SkippedColumn:
    """An ``ADD COLUMN`` the runner skipped because the column was already there, as added."""

    file: str
    line: int
    table: str
    column: str
    definition: ColumnDefinition
    sql: str

    def message(self, *, would: bool = False) -> str:
        """What the runner logs (``would``: what a dry run notes)."""
        skipped = "it would skip" if would else "skipped"
        return (
            f"migration {self.file}, line {self.line}: column {self.column} of table "
            f"{self.table} already exists as the file adds it ({self.definition}); {skipped} "
            f"`{short(self.sql)}` (a database the old runner left half-applied, or a table "
            f"created with the column beforehand)"
        )


def existing_column(db: sqlite3.Connection, add: AddColumn) -> ColumnDefinition | None:
    """The column as the table has it now, or None (no such column, or no such table).

    Looks in the table the statement names, resolved the way SQLite resolves
    it (``temp``, then ``main``, then attached databases, unless a schema is
    given). A table or schema that does not exist, a view and a virtual table
    read as None: the statement then runs and SQLite reports what is wrong.
    """
    schema = _schema_of_table(db, add)
    if schema is None:
        return None
    rows = db.execute(
        'SELECT name, type, "notnull", dflt_value, hidden FROM pragma_table_xinfo(?, ?)',
        (add.table.name, schema),
    ).fetchall()
    wanted = fold(add.column)
    for name, declared, not_null, default, hidden in rows:
        if fold(name) == wanted:
            return ColumnDefinition(declared or "", bool(not_null), default, hidden in _GENERATED)
    return None


def _schema_of_table(db: sqlite3.Connection, add: AddColumn) -> str | None:
    """The database holding the ordinary table the statement names, as SQLite finds it."""
    if add.table.schema is not None:
        candidates = [add.table.schema]
    else:
        attached = [row[1] for row in db.execute("PRAGMA database_list")]
        candidates = ["temp", "main", *(s for s in attached if s not in ("main", "temp"))]
    for schema in candidates:
        try:
            row = db.execute(
                f"SELECT type, sql FROM {quote_identifier(schema)}.sqlite_master "
                f"WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",
                (add.table.name,),
            ).fetchone()
        except db.Error:  # sqlite3's or sqlcipher3's: an unknown schema
            return None
        if row is not None:
            kind, sql = row
            virtual = fold(" ".join(str(sql).split()[:2])) == "create virtual"
            return schema if kind == "table" and not virtual else None
    return None


def already_added(
    db: sqlite3.Connection, file: str, statement: Statement, add: AddColumn, label: str
) -> SkippedColumn | None:
    """Whether to skip ``statement`` because its column exists as it would add it.

    None: the column is not there, run the statement. A ``SkippedColumn``:
    skip it. ``MigrationRefusedError`` naming the file, line, table, column
    and both definitions when the column is there but differs, since the
    database then does not hold what the file describes.
    """
    existing = existing_column(db, add)
    if existing is None:
        return None
    if same_definition(existing, add.definition):
        return SkippedColumn(
            file, statement.line, str(add.table), add.column, existing, statement.sql
        )
    raise MigrationRefusedError(
        f"migration {file}, line {statement.line}: table {add.table} in {label} already has a "
        f"column {add.column}, as `{existing}`, but the file adds it as `{add.definition}` "
        f"(declared type, NOT NULL and DEFAULT must match). Nothing of the file was applied. "
        f"If a test fixture creates the table, give it the column exactly as the migration adds "
        f"it, or leave the column to the migration; in a database, bring the column to the "
        f"file's definition (rebuild the table) and run the migrations again.",
        name=file,
        line=statement.line,
    )
