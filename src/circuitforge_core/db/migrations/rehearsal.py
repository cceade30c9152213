"""Rehearsing a migrations folder before it reaches a real database.

Owns ``check_migrations``: the folder applied one file at a time, with the
project's own runner, to two scratch databases, one empty and one given a
row in every table before each file (``seed_rows`` makes those rows from the
schema: values that fit each column's type, references to real parent rows).
A file fails the check when it

- cannot run on the empty database, or only on the empty one (an ``ADD
  COLUMN ... NOT NULL`` without a default, a ``UNIQUE`` index over
  duplicates: what users' data would hit);
- loses rows (a table holds fewer, or a dropped table's rows went nowhere),
  unless it is listed in ``allow_row_loss``;
- leaves rows whose foreign keys point at nothing, or a foreign key SQLite
  cannot enforce;
- cannot run again from a half-applied old state: the old ``executescript``
  runner committed statement by statement, so a crash or error part-way left
  the first statements committed and the file unrecorded. For each such
  prefix the file is run again; it must succeed and leave the same schema and
  row counts as a clean run (``IF NOT EXISTS`` guards; the runner itself
  completes an ``ADD COLUMN`` whose column is already there as the file adds
  it, so those pass).

Does not touch any real database, print, or know pytest (pytest_plugin.py
presents the report).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..connect import Connection, get_db
from ..errors import ForeignKeyViolationError, MigrationError
from ..files import remove_quietly
from ..sqlite_facts import companion_files, quote_identifier
from ..sqlsplit import split_sql
from .drift import (
    ColumnModel,
    SchemaModel,
    TableModel,
    compare_schemas,
    read_schema,
    sql_tokens,
)
from .folder import MigrationFile, MigrationsDir, read_migrations
from .plan import wraps_whole_file
from .runner import run_migrations
from .statements import fold

RerunScope = Literal["all", "no-transaction", "off"]
CheckName = Literal["empty", "rows", "lost rows", "foreign keys", "rerun"]


@dataclass(frozen=True, slots=True)
class MigrationCheckProblem:
    """One reason a migration file fails the check; ``check`` says which check."""

    name: str
    check: CheckName
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f", line {self.line}" if self.line else ""
        return f"{self.name}{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class MigrationCheckReport:
    """What ``check_migrations`` found: ``ok`` when there is no problem.

    ``checked`` lists the files that went through every check, ``notes``
    what could not be checked and why (a table no generated row fits, files
    after a failing one).
    """

    folder: str
    checked: tuple[str, ...]
    problems: tuple[MigrationCheckProblem, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [
            f"cf-db migration check of {self.folder}: {len(self.checked)} file(s) checked, "
            f"{len(self.problems)} problem(s)"
        ]
        lines += [f"  problem: {problem}" for problem in self.problems]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def check_migrations(
    migrations_dir: MigrationsDir,
    *,
    allow_row_loss: Iterable[str] = (),
    rerun: RerunScope = "all",
    workdir: str | os.PathLike[str] | None = None,
) -> MigrationCheckReport:
    """Apply the folder file by file to an empty and a seeded scratch database; report problems.

    ``allow_row_loss`` names files meant to delete rows (a cleanup, dropping
    a dead table). ``rerun`` picks the files checked from a half-applied
    state: ``all`` (what databases once migrated by the old runner need),
    ``no-transaction`` (only files marked ``-- cf-db: no-transaction``,
    which the current runner applies statement by statement), or ``off``.
    Scratch files go in ``workdir`` (a temporary folder by default) and are
    removed afterwards.
    """
    if rerun not in ("all", "no-transaction", "off"):
        raise ValueError(f"rerun must be 'all', 'no-transaction' or 'off', not {rerun!r}")
    files = read_migrations(migrations_dir)
    with _scratch_folder(workdir) as folder:
        return _Checker(folder, set(allow_row_loss), rerun).run(files, str(migrations_dir))


@contextlib.contextmanager
def _scratch_folder(workdir: str | os.PathLike[str] | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cf-db-check-", dir=workdir) as name:
        yield Path(name)


class _Checker:
    """One run of the check: two scratch databases walked forward together."""

    def __init__(self, folder: Path, allow_row_loss: set[str], rerun: RerunScope) -> None:
        self.folder = folder
        self.stage = folder / "migrations"  # the files applied so far, one more each step
        self.stage.mkdir()
        self.allow_row_loss = allow_row_loss
        self.rerun = rerun
        self.problems: list[MigrationCheckProblem] = []
        self.notes: dict[str, None] = {}  # ordered and without repeats
        self._names = (f"scratch-{n}.db" for n in itertools.count())

    def run(self, files: list[MigrationFile], shown_folder: str) -> MigrationCheckReport:
        checked: list[str] = []
        empty = get_db(self.folder / "empty.db")
        seeded = get_db(self.folder / "seeded.db")
        try:
            for number, file in enumerate(files, start=1):
                (self.stage / file.name).write_text(file.text, encoding="utf-8")
                if not self._step(empty, seeded, file, number):
                    later = [f.name for f in files[number:]]
                    if later:
                        self._note(f"not checked, as they build on {file.name}: {', '.join(later)}")
                    break
                checked.append(file.name)
        finally:
            empty.close()
            seeded.close()
        return MigrationCheckReport(
            shown_folder, tuple(checked), tuple(self.problems), tuple(self.notes)
        )

    def _note(self, text: str) -> None:
        self.notes[text] = None

    def _problem(self, name: str, check: CheckName, message: str, line: int | None = None) -> None:
        self.problems.append(MigrationCheckProblem(name, check, message, line))

    def _step(
        self, empty: Connection, seeded: Connection, file: MigrationFile, number: int
    ) -> bool:
        """Check one file; False when the check cannot go on past it."""
        try:
            run_migrations(empty, self.stage)
        except MigrationError as exc:
            self._problem(
                file.name, "empty", f"fails on an empty database: {_reason(exc)}", _line(exc)
            )
            return False
        for table, reason in seed_rows(seeded, number).items():
            self._note(f"table {table} got no generated row (its rows are not checked): {reason}")
        before_counts = row_counts(seeded)
        snapshot = self._copy(seeded) if self._rerun_applies(file) else None
        try:
            try:
                run_migrations(seeded, self.stage)
            except ForeignKeyViolationError as exc:
                self._problem(
                    file.name,
                    "foreign keys",
                    f"runs on an empty database but, with a row in every table, would leave "
                    f"dangling references: {_reason(exc)}",
                )
                return False
            except MigrationError as exc:
                self._problem(
                    file.name,
                    "rows",
                    f"runs on an empty database but fails on one holding rows (one generated "
                    f"row per table): {_reason(exc)}",
                    _line(exc),
                )
                return False
            after = read_schema(seeded)
            after_counts = row_counts(seeded, after)
            self._check_rows(file, before_counts, after_counts)
            self._check_foreign_keys(file, seeded)
            if snapshot is not None:
                self._check_rerun(file, snapshot, after, after_counts)
        finally:
            if snapshot is not None:
                _remove_database(snapshot)
        return True

    # -- rows and keys -------------------------------------------------------------

    def _check_rows(
        self, file: MigrationFile, before: dict[str, int], after: dict[str, int]
    ) -> None:
        losses = [
            f"{table} went from {count} to {after[table]} rows"
            for table, count in before.items()
            if table in after and after[table] < count
        ]
        dropped = {table: count for table, count in before.items() if table not in after and count}
        appeared = sum(count for table, count in after.items() if table not in before)
        if sum(dropped.values()) > appeared:
            held = ", ".join(f"{table} ({count})" for table, count in dropped.items())
            losses.append(f"dropped {held} and only {appeared} row(s) reappeared in new tables")
        if not losses:
            return
        if file.name in self.allow_row_loss:
            self._note(f"{file.name} loses rows, as allowed: {'; '.join(losses)}")
            return
        self._problem(
            file.name,
            "lost rows",
            f"loses rows: {'; '.join(losses)}. If that is intended, allow it for this file "
            f"(allow_row_loss / cf_db_allow_row_loss).",
        )

    def _check_foreign_keys(self, file: MigrationFile, db: Connection) -> None:
        try:
            violations = db.execute("PRAGMA foreign_key_check").fetchall()
        except sqlite3.Error as exc:  # "foreign key mismatch": a key SQLite cannot enforce
            self._problem(file.name, "foreign keys", f"leaves a broken foreign key: {exc}")
            return
        if violations:
            sample = ", ".join(f"{t} rowid {r} -> {p}" for t, r, p, _ in violations[:5])
            self._problem(
                file.name,
                "foreign keys",
                f"leaves {len(violations)} row(s) whose foreign keys point at nothing: {sample}",
            )

    # -- half-applied reruns -------------------------------------------------------

    def _rerun_applies(self, file: MigrationFile) -> bool:
        if self.rerun == "no-transaction":
            return file.no_transaction
        return self.rerun == "all"

    def _check_rerun(
        self, file: MigrationFile, before: Path, expected: SchemaModel, counts: dict[str, int]
    ) -> None:
        statements = split_sql(file.text)
        if len(statements) < 2 or wraps_whole_file(statements):
            return  # nothing to half-apply; a BEGIN ... COMMIT file was atomic even then
        for prefix in range(1, len(statements)):
            scratch = self._copy_file(before)
            try:
                db = get_db(scratch)
                try:
                    if not _run_prefix(db, [s.sql for s in statements[:prefix]]):
                        return  # the file fails there anyway; the checks above said so
                    ran = (
                        f"when only its first {prefix} of {len(statements)} statements were "
                        f"committed and the file was not recorded (what the old executescript "
                        f"runner left after a crash or an error)"
                    )
                    try:
                        run_migrations(db, self.stage)
                    except MigrationError as exc:
                        reason = _reason(exc)
                        self._problem(
                            file.name,
                            "rerun",
                            f"cannot run again {ran}: {reason}. {_rerun_hint(reason)}",
                            _line(exc),
                        )
                        return
                    message = self._rerun_differences(db, expected, counts)
                finally:
                    db.close()
            finally:
                _remove_database(scratch)
            if message:
                self._problem(file.name, "rerun", f"runs again {ran}, but {message}")
                return

    def _rerun_differences(
        self, db: Connection, expected: SchemaModel, counts: dict[str, int]
    ) -> str | None:
        schema = read_schema(db)
        differences = compare_schemas(expected, schema)
        if differences:
            shown = "; ".join(str(d) for d in differences[:3])
            return f"leaves a different schema than a clean run: {shown}"
        rerun_counts = row_counts(db, schema)
        changed = [
            f"{table} holds {rerun_counts.get(table, 0)} rows instead of {count}"
            for table, count in counts.items()
            if rerun_counts.get(table, 0) != count
        ]
        if changed:
            return (
                f"leaves different rows than a clean run (statements ran twice): "
                f"{'; '.join(changed)}"
            )
        return None

    # -- scratch files -------------------------------------------------------------

    def _copy(self, db: sqlite3.Connection) -> Path:
        """A copy of ``db`` in a new file (a new path: the runner's repeat shortcut keys on it)."""
        path = self.folder / next(self._names)
        target = sqlite3.connect(path)
        try:
            db.backup(target)
        finally:
            target.close()
        return path

    def _copy_file(self, source: Path) -> Path:
        origin = sqlite3.connect(source)
        try:
            return self._copy(origin)
        finally:
            origin.close()


def _run_prefix(db: Connection, statements: list[str]) -> bool:
    """Run statements one by one, each committing on its own; False if one fails."""
    saved = db.isolation_level
    db.isolation_level = None
    try:
        for sql in statements:
            try:
                db.execute(sql).close()
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                return False
        if db.in_transaction:
            db.execute("COMMIT")
        return True
    finally:
        db.isolation_level = saved


def _remove_database(path: Path) -> None:
    remove_quietly(str(path), *companion_files(str(path)))


def _reason(exc: BaseException) -> str:
    """SQLite's words when a statement failed, else the error's first line."""
    sqlite_message = getattr(exc, "sqlite_message", None)
    if isinstance(sqlite_message, str) and sqlite_message:
        return sqlite_message
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _rerun_hint(reason: str) -> str:
    if "already exists" in reason:
        return (
            "Guard it with IF NOT EXISTS, or drop what the file builds half-way (DROP TABLE IF "
            "EXISTS for a rebuild's new table) at its start."
        )
    return "Make every statement safe to run a second time."


def _line(exc: BaseException) -> int | None:
    line = getattr(exc, "line", None)
    return line if isinstance(line, int) and line > 0 else None


# -- counting and seeding rows -------------------------------------------------------


def row_counts(db: sqlite3.Connection, schema: SchemaModel | None = None) -> dict[str, int]:
    """Rows per table (lower-cased name), tool tables and virtual tables' shadows left out.

    ``schema`` is ``db``'s, when the caller has just read it.
    """
    counts = {}
    for key, table in (read_schema(db) if schema is None else schema).tables.items():
        try:
            (count,) = db.execute(f"SELECT count(*) FROM {quote_identifier(table.name)}").fetchone()
        except sqlite3.Error:  # a virtual table whose module is not loaded here
            continue
        counts[key] = int(count)
    return counts


def seed_rows(db: sqlite3.Connection, round_number: int = 1) -> dict[str, str]:
    """Insert one generated row into every table; the tables that took none, with the reason.

    Values fit each column's declared type and are new each round (so
    UNIQUE columns take them); a foreign key refers to the newest row of its
    parent, which is seeded first; a CHECK constraint that refuses the first
    values is retried with the literals its table's definition mentions.
    Generated and hidden columns are left to SQLite, as is an ``INTEGER
    PRIMARY KEY``. Commits.
    """
    schema = read_schema(db)
    refused: dict[str, str] = {}
    try:
        for table in _parents_first(schema):
            reason = _seed_table(db, schema, table, round_number)
            if reason is not None:
                refused[table.name] = reason
        if db.in_transaction:
            db.commit()
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    return refused


def _parents_first(schema: SchemaModel) -> list[TableModel]:
    """Tables ordered so that a referenced table comes before the tables referring to it."""
    ordered: list[TableModel] = []
    state: dict[str, str] = {}

    def visit(key: str) -> None:
        if state.get(key) is not None:
            return  # done, or on the current path (a cycle: broken here)
        state[key] = "visiting"
        table = schema.tables[key]
        for fk in table.foreign_keys:
            parent = fold(fk.parent)
            if parent != key and parent in schema.tables:
                visit(parent)
        state[key] = "done"
        ordered.append(table)

    for key in sorted(schema.tables):
        visit(key)
    return ordered


def _is_rowid_alias(table: TableModel, column: ColumnModel) -> bool:
    primary = [c for c in table.columns if c.primary_key]
    return (
        len(primary) == 1
        and primary[0] is column
        and fold(column.declared_type) == "integer"
        and "WITHOUT ROWID" not in table.options
    )


def _seed_table(
    db: sqlite3.Connection, schema: SchemaModel, table: TableModel, round_number: int
) -> str | None:
    values: dict[str, object] = {}
    rowid_alias = next((c for c in table.columns if _is_rowid_alias(table, c)), None)
    for fk in table.foreign_keys:
        reason = _refer(
            db, schema, table, fk.columns, fk.parent, fk.parent_columns, values, rowid_alias
        )
        if reason is not None:
            return reason
    for column in table.columns:
        if column.generated or column.name in values or column is rowid_alias:
            continue
        values[column.name] = _value(column, round_number)
    if not values:
        sql = f"INSERT INTO {quote_identifier(table.name)} DEFAULT VALUES"
        try:
            db.execute(sql)
        except sqlite3.Error as exc:
            return str(exc)
        return None
    return _insert_with_retries(db, table, values)


def _refer(
    db: sqlite3.Connection,
    schema: SchemaModel,
    table: TableModel,
    columns: tuple[str, ...],
    parent_name: str,
    parent_columns: tuple[str | None, ...],
    values: dict[str, object],
    rowid_alias: ColumnModel | None,
) -> str | None:
    """Fill ``values`` for one foreign key; the reason when no parent row can be named."""
    by_name = {fold(c.name): c for c in table.columns}
    nullable = all(not by_name[fold(c)].not_null for c in columns if fold(c) in by_name)
    parent = schema.tables.get(fold(parent_name))
    if parent is None:
        return (
            None if nullable else f"its foreign key refers to {parent_name}, which does not exist"
        )
    targets = [c for c in parent_columns if c is not None]
    if len(targets) != len(columns):  # REFERENCES parent: its primary key
        targets = [
            c.name for c in sorted(parent.columns, key=lambda c: c.primary_key) if c.primary_key
        ]
        if not targets:
            targets = ["rowid"]
    if parent is table:
        if nullable:
            values.update(dict.fromkeys(columns))
            return None
        if rowid_alias is not None and [fold(t) for t in targets] == [fold(rowid_alias.name)]:
            (next_id,) = db.execute(
                f"SELECT coalesce(max(rowid), 0) + 1 FROM {quote_identifier(table.name)}"
            ).fetchone()
            values[rowid_alias.name] = next_id
            values[columns[0]] = next_id
            return None
        return "a NOT NULL reference to its own table"
    selected = ", ".join(quote_identifier(t) for t in targets)
    order = "" if "WITHOUT ROWID" in parent.options else " ORDER BY rowid DESC"
    try:
        row = db.execute(
            f"SELECT {selected} FROM {quote_identifier(parent.name)}{order} LIMIT 1"
        ).fetchone()
    except sqlite3.Error as exc:
        return f"cannot read its parent {parent.name}: {exc}"
    if row is None:
        if nullable:
            values.update(dict.fromkeys(columns))
            return None
        return f"its parent {parent.name} has no row to refer to"
    values.update(zip(columns, row, strict=True))
    return None


def _value(column: ColumnModel, n: int) -> object:
    """A value of the column's declared type (by SQLite's affinity rules), new for round ``n``."""
    declared = column.declared_type.upper()
    if "INT" in declared:
        return n
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")) or not declared:
        return f"{column.name} {n}"
    if "BLOB" in declared:
        return n.to_bytes(4, "big")
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return n + 0.5
    if "DATE" in declared or "TIME" in declared:
        return f"{2000 + n % 1000:04d}-01-02 03:04:05"
    if "BOOL" in declared:
        return 1
    return n  # NUMERIC, DECIMAL, ANY


_CHECK_FAILED = "CHECK constraint failed"


def _insert_with_retries(
    db: sqlite3.Connection, table: TableModel, values: dict[str, object]
) -> str | None:
    names = list(values)
    sql = (
        f"INSERT INTO {quote_identifier(table.name)} "
        f"({', '.join(quote_identifier(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
    error = _try_insert(db, sql, [values[n] for n in names])
    if error is None or _CHECK_FAILED not in error:
        return error
    candidates = _literals(table.sql)
    row = dict(values)
    constrained = [name for name in names if fold(name) in error.lower()] or names
    for name in constrained:  # greedily: a value that changes or clears the failure stays
        for candidate in candidates:
            attempt = {**row, name: candidate}
            outcome = _try_insert(db, sql, [attempt[n] for n in names])
            if outcome is None:
                return None
            if outcome != error:
                row, error = attempt, outcome
                break
    return error


def _try_insert(db: sqlite3.Connection, sql: str, parameters: list[object]) -> str | None:
    try:
        db.execute(sql, parameters)
    except sqlite3.Error as exc:
        return str(exc)
    return None


def _literals(sql: str) -> list[object]:
    """The strings and numbers a table definition mentions, then a few usual values."""
    found: list[object] = []
    for token in sql_tokens(sql):
        if token.startswith("'"):
            found.append(token[1:-1].replace("''", "'"))
        elif token[:1].isdigit():
            with contextlib.suppress(ValueError):
                found.append(int(token) if token.isdigit() else float(token))
    return [*dict.fromkeys([*found, 0, 1, -1, ""])]
