"""The verdicts: how each file will run, and what the folder and ``_migrations`` say together.

Owns the rules a migration file must follow (statements that cannot run in
a transaction, transaction control inside the runner's transaction, the
redundant ``BEGIN ... COMMIT`` around a whole file, no dropping or altering
``_migrations``, no pragma that outlives the file, which files need foreign
keys off, which ``ADD COLUMN`` statements the old runner's recovery covers,
what connection state a file may leave behind) and the comparison of the
folder with the recorded rows (applied, unchecked, modified, pending,
missing, out of order). The runner, status,
verify, the dry run and lint all ask here, so they cannot disagree. Runs
nothing and reads no file or database itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..errors import MigrationRefusedError
from ..sqlsplit import Statement, split_sql
from .folder import NO_TRANSACTION_MARKER, MigrationFile
from .records import MIGRATIONS_TABLE, Record
from .statements import (
    AddColumn,
    added_column,
    altered_or_dropped_table,
    may_create_temp,
    pragma_setting,
)

# Statements SQLite refuses, or silently ignores, inside a transaction.
_NEEDS_NO_TRANSACTION_PRAGMAS = {
    "JOURNAL_MODE",
    "SYNCHRONOUS",
    "PAGE_SIZE",
    "AUTO_VACUUM",
    "WAL_CHECKPOINT",
}
#: Pragmas that change the whole process and cannot be put back after a file: refused.
PROCESS_PRAGMAS = frozenset({"hard_heap_limit", "temp_store_directory", "data_store_directory"})
BEGIN_KEYWORDS = frozenset({"BEGIN"})
END_KEYWORDS = frozenset({"COMMIT", "END"})
#: Leading keywords of statements that start, end or undo a transaction.
TRANSACTION_KEYWORDS = BEGIN_KEYWORDS | END_KEYWORDS | {"ROLLBACK"}


# -- one statement -------------------------------------------------------------------


def _pragma(head: tuple[str, ...]) -> tuple[str, bool] | None:
    """For a PRAGMA statement: its name and whether it sets a value."""
    if head[:1] != ("PRAGMA",) or len(head) < 2:
        return None
    if len(head) >= 4 and head[2] == ".":  # PRAGMA schema.name
        return head[3], len(head) >= 5 and head[4] in {"=", "("}
    return head[1], len(head) >= 3 and head[2] in {"=", "("}


def is_foreign_keys_pragma(head: tuple[str, ...]) -> bool:
    """``PRAGMA foreign_keys = ...``: a no-op inside a transaction; the runner switches it."""
    return _pragma(head) == ("FOREIGN_KEYS", True)


def needs_no_transaction(head: tuple[str, ...]) -> bool:
    """``VACUUM`` and the pragmas SQLite refuses or ignores inside a transaction."""
    if head[:1] == ("VACUUM",):
        return True
    pragma = _pragma(head)
    if pragma is None:
        return False
    name, sets = pragma
    return name in _NEEDS_NO_TRANSACTION_PRAGMAS and (sets or name == "WAL_CHECKPOINT")


def is_transaction_control(statement: Statement) -> bool:
    """``BEGIN``, ``COMMIT``, ``END`` or ``ROLLBACK`` (not ``ROLLBACK TO``, a savepoint's)."""
    head = statement.head(3)
    keyword = head[0]
    return keyword in BEGIN_KEYWORDS | END_KEYWORDS or (keyword == "ROLLBACK" and "TO" not in head)


def wraps_whole_file(statements: list[Statement]) -> bool:
    """Whether a ``BEGIN ... COMMIT`` pair wraps all of ``statements``.

    Files written for the old ``executescript`` runner often wrap themselves
    in a transaction. The runner already does that, so the pair is redundant
    and dropped; a ``COMMIT`` or ``ROLLBACK`` anywhere else would split the
    file's atomicity and is refused.
    """
    return (
        len(statements) >= 2
        and statements[0].head(1)[0] in BEGIN_KEYWORDS
        and statements[-1].head(1)[0] in END_KEYWORDS
    )


def _drops_or_rebuilds(head: tuple[str, ...]) -> bool:
    """``DROP TABLE`` or ``ALTER TABLE ... RENAME/DROP``: a cascade could delete child rows."""
    return head[:2] == ("DROP", "TABLE") or (
        head[:2] == ("ALTER", "TABLE") and bool({"RENAME", "DROP"} & set(head[3:]))
    )


def short(sql: str, limit: int = 80) -> str:
    """``sql`` on one line, cut to ``limit`` characters, for messages."""
    flat = " ".join(sql.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- one file ------------------------------------------------------------------------

RefusalRule = Literal[
    "needs-no-transaction", "transaction-control", "migrations-table", "process-pragma"
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A statement that makes the runner refuse its file; ``rule`` is also lint's code."""

    rule: RefusalRule
    statement: Statement

    def error(self, file: MigrationFile, database: str | None = None) -> MigrationRefusedError:
        """The error the runner raises for this statement (``database``: the one it runs on)."""
        where = f"migration {file.name}, line {self.statement.line}: `{short(self.statement.sql)}`"
        if self.rule == "needs-no-transaction":
            message = (
                f"{where} cannot run inside a transaction. Move it to a file of its own whose "
                f"first line is `{NO_TRANSACTION_MARKER}`."
            )
        elif self.rule == "migrations-table":
            message = (
                f"{where} would drop or alter {MIGRATIONS_TABLE}, where the runner records which "
                f"migrations are applied (without it, every file would run again). Remove the "
                f"statement: the runner owns that table."
            )
        elif self.rule == "process-pragma":
            message = (
                f"{where} changes a setting of the whole process that cannot be put back when "
                f"the file ends. Remove it; set it in the application at start-up if it needs "
                f"it."
            )
        else:
            message = (
                f"{where} would end or restart the transaction the runner wraps the file in. "
                f"Remove it: each file already runs in one transaction (SAVEPOINT/RELEASE are "
                f"fine)."
            )
        if database is not None:
            message += f" Nothing was applied to {database}."
        return MigrationRefusedError(message, name=file.name, line=self.statement.line)


@dataclass(frozen=True, slots=True)
class ConnectionChanges:
    """What of the connection a file may change beyond the database: put back after it.

    ``pragmas``: it has a ``PRAGMA`` statement; ``attachments``: an
    ``ATTACH``; ``temp_objects``: a ``CREATE`` that may make a ``TEMP`` object.
    """

    pragmas: bool = False
    attachments: bool = False
    temp_objects: bool = False

    def __bool__(self) -> bool:
        return self.pragmas or self.attachments or self.temp_objects


@dataclass(frozen=True, slots=True)
class FilePlan:
    """How one file will run, and every reason the runner would refuse it.

    ``statements`` are what runs, in order (without the ``PRAGMA
    foreign_keys`` lines and a wrapping ``BEGIN ... COMMIT``, which the runner
    handles itself); ``foreign_keys_off`` says enforcement must be off while
    it runs and the touched tables checked before ``COMMIT``; ``wrapper`` is
    the ``BEGIN`` of a dropped wrapping pair. ``added_columns`` holds, for
    each statement, the column an ``ALTER TABLE ... ADD COLUMN`` adds (None
    for other statements): one that already exists is checked and skipped
    (the old runner's recovery). ``changes`` says what connection state must
    be put back after the file. The file runs only when ``refusals`` is empty.
    """

    file: MigrationFile
    statements: tuple[Statement, ...]
    foreign_keys_off: bool
    wrapper: Statement | None
    refusals: tuple[Refusal, ...]
    added_columns: tuple[AddColumn | None, ...] = ()
    changes: ConnectionChanges = ConnectionChanges()


def examine(file: MigrationFile) -> FilePlan:
    """Judge ``file`` against every rule and decide how it would run; never raises."""
    statements = split_sql(file.text)
    if file.no_transaction:
        return _planned(file, statements, False, None, _file_wide_refusals(statements))
    kept: list[Statement] = []
    needing_no_transaction: list[Refusal] = []
    foreign_keys_off = False
    for statement in statements:
        head = statement.head(6)
        if is_foreign_keys_pragma(head):
            foreign_keys_off = True  # a no-op inside a transaction; we switch it ourselves
            continue
        if needs_no_transaction(head):
            needing_no_transaction.append(Refusal("needs-no-transaction", statement))
        if _drops_or_rebuilds(head):
            foreign_keys_off = True
        kept.append(statement)
    wrapper = None
    if wraps_whole_file(kept):
        wrapper, kept = kept[0], kept[1:-1]
    controls = [Refusal("transaction-control", s) for s in kept if is_transaction_control(s)]
    refusals = (*needing_no_transaction, *controls, *_file_wide_refusals(kept))
    return _planned(file, kept, foreign_keys_off, wrapper, refusals)


def _planned(
    file: MigrationFile,
    statements: list[Statement],
    foreign_keys_off: bool,
    wrapper: Statement | None,
    refusals: tuple[Refusal, ...],
) -> FilePlan:
    heads = [statement.head(1)[0] for statement in statements]
    changes = ConnectionChanges(
        pragmas="PRAGMA" in heads,
        attachments="ATTACH" in heads,
        temp_objects=any(
            head == "CREATE" and may_create_temp(s)
            for head, s in zip(heads, statements, strict=True)
        ),
    )
    added = tuple(
        added_column(s) if head == "ALTER" else None
        for head, s in zip(heads, statements, strict=True)
    )
    in_file_order = tuple(sorted(refusals, key=lambda refusal: refusal.statement.line))
    return FilePlan(
        file, tuple(statements), foreign_keys_off, wrapper, in_file_order, added, changes
    )


def _file_wide_refusals(statements: list[Statement]) -> tuple[Refusal, ...]:
    """The rules for every file, with a transaction or without: _migrations, process pragmas."""
    refusals = []
    for statement in statements:
        keyword = statement.sql[:6].upper()
        if keyword.startswith(("ALTER", "DROP")):
            target = altered_or_dropped_table(statement)
            if target is not None and target[1].is_main(MIGRATIONS_TABLE):
                refusals.append(Refusal("migrations-table", statement))
        elif keyword == "PRAGMA":  # the functions below read the statement properly
            pragma = pragma_setting(statement)
            if pragma is not None and pragma[1] and pragma[0] in PROCESS_PRAGMAS:
                refusals.append(Refusal("process-pragma", statement))
    return tuple(refusals)


def plan_file(file: MigrationFile, database: str | None = None) -> FilePlan:
    """The plan the runner follows; ``MigrationRefusedError`` for the first refusal."""
    plan = examine(file)
    if plan.refusals:
        raise plan.refusals[0].error(file, database)
    return plan


# -- the folder against _migrations --------------------------------------------------

Verdict = Literal["applied", "unchecked", "modified", "pending", "missing"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """One migration as the folder and ``_migrations`` see it together.

    ``state``: ``applied`` (recorded with the file's checksum), ``unchecked``
    (recorded without a checksum, by the old runner), ``modified`` (recorded
    with another checksum), ``pending`` (a file, no row) or ``missing`` (a
    row, no file).
    """

    name: str
    state: Verdict
    file: MigrationFile | None
    record: Record | None

    @property
    def applied_at(self) -> str | None:
        return None if self.record is None else self.record.applied_at


def compare(files: Iterable[MigrationFile], records: Mapping[str, Record]) -> list[Comparison]:
    """Every file in filename order, then every recorded name without a file, sorted."""
    comparisons = []
    present = set()
    for file in files:
        present.add(file.name)
        record = records.get(file.name)
        state: Verdict
        if record is None:
            state = "pending"
        elif record.checksum is None:
            state = "unchecked"
        elif record.checksum == file.checksum:
            state = "applied"
        else:
            state = "modified"
        comparisons.append(Comparison(file.name, state, file, record))
    for name in sorted(set(records) - present):
        comparisons.append(Comparison(name, "missing", None, records[name]))
    return comparisons


def pending_files(comparisons: Iterable[Comparison]) -> list[MigrationFile]:
    """The files not applied yet, in the order the runner applies them."""
    return [c.file for c in comparisons if c.state == "pending" and c.file is not None]


def named(comparisons: Iterable[Comparison], state: Verdict) -> list[str]:
    """The names in ``state``, in the comparison's order."""
    return [c.name for c in comparisons if c.state == state]


def out_of_order(comparisons: list[Comparison]) -> list[tuple[str, str]]:
    """``(pending, latest applied)`` for each pending file that sorts before an applied one.

    Two branches merged: the runner applies such a file anyway, with a warning.
    """
    applied = [c.name for c in comparisons if c.file is not None and c.record is not None]
    if not applied:
        return []
    latest = max(applied)
    return [(c.name, latest) for c in comparisons if c.state == "pending" and c.name < latest]
