"""The read-only views: status, checksum verification and the dry run.

Owns turning the comparison of the folder with ``_migrations`` (plan.py)
into what a person asks: which migrations are applied (``migration_status``),
whether the applied files are still what was applied
(``verify_migrations``), and what ``run_migrations`` would do, refuse and
fail at (``plan_migrations``; with ``execute=True`` the files run on a copy
first, dry_run.py). Each takes a connection, or the path of a database that
it only reads and never creates. Never writes the database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from ..cipher import Key
from ..connect import get_db
from ..errors import OpenError
from .dry_run import Rehearsal, rehearse, scratch_copy
from .folder import MigrationsDir, read_migrations
from .locking import database_path
from .plan import Comparison, FilePlan, Verdict, compare, examine, named, out_of_order
from .records import Record, read_records
from .runner import label as runner_label

DatabaseOrPath = sqlite3.Connection | str | os.PathLike[str]


# -- status --------------------------------------------------------------------------

State = Literal["applied", "pending", "modified", "missing"]

_STATUS: dict[Verdict, State] = {
    "applied": "applied",
    "unchecked": "applied",  # the old runner recorded no checksum: nothing to compare
    "modified": "modified",
    "pending": "pending",
    "missing": "missing",
}


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """The state of one migration, as ``migration_status`` reports it.

    ``applied_at`` is the UTC time SQLite recorded, None while pending.
    """

    name: str
    state: State
    applied_at: str | None


def migration_status(
    db: DatabaseOrPath, migrations_dir: MigrationsDir, *, key: Key | None = None
) -> list[MigrationStatus]:
    """Every file and every recorded name with its state; never writes.

    Files come in filename order, then recorded names whose file is missing.
    ``db`` may be the path of a database file, opened read-only (with ``key``
    if it is encrypted); a file that does not exist shows every migration
    pending and is not created.
    """
    files = read_migrations(migrations_dir)
    return [
        MigrationStatus(c.name, _STATUS[c.state], c.applied_at)
        for c in compare(files, _recorded(db, key))
    ]


# -- verify --------------------------------------------------------------------------

ChecksumState = Literal["ok", "modified", "missing", "unchecked", "pending"]

_CHECKSUM: dict[Verdict, ChecksumState] = {
    "applied": "ok",
    "unchecked": "unchecked",
    "modified": "modified",
    "pending": "pending",
    "missing": "missing",
}


@dataclass(frozen=True, slots=True)
class ChecksumCheck:
    """One migration's recorded checksum against its file.

    ``state`` is ``ok`` (they match), ``modified`` (they differ), ``missing``
    (recorded, no file), ``unchecked`` (recorded without a checksum by the old
    runner; the next ``run_migrations`` records the file's) or ``pending``
    (a file not applied yet, nothing to compare).
    """

    name: str
    state: ChecksumState
    applied_at: str | None
    recorded: str | None
    actual: str | None


def verify_migrations(
    db: DatabaseOrPath, migrations_dir: MigrationsDir, *, key: Key | None = None
) -> list[ChecksumCheck]:
    """Compare the checksums ``_migrations`` recorded with the files; never writes.

    Files in filename order, then recorded names without a file. Works on a
    read-only connection. ``db`` may be the path of an existing database
    file, opened read-only (with ``key`` if it is encrypted); a path that
    does not exist raises ``OpenError``, since there is nothing to verify.
    """
    if isinstance(db, str | os.PathLike) and not os.path.lexists(db):
        path = os.path.abspath(db)
        raise OpenError(path, f"{path} does not exist; nothing to verify.")
    files = read_migrations(migrations_dir)
    return [_checksum_check(c) for c in compare(files, _recorded(db, key))]


def _checksum_check(comparison: Comparison) -> ChecksumCheck:
    record, file = comparison.record, comparison.file
    return ChecksumCheck(
        comparison.name,
        _CHECKSUM[comparison.state],
        comparison.applied_at,
        None if record is None else record.checksum,
        None if file is None else file.checksum,
    )


# -- the dry run ---------------------------------------------------------------------

ProblemKind = Literal["modified", "refused", "failed"]


@dataclass(frozen=True, slots=True)
class MigrationProblem:
    """Something that makes ``run_migrations`` refuse or fail, found by ``plan_migrations``.

    ``kind`` is ``modified`` (an applied file was edited; ``line`` is None),
    ``refused`` (a pending file breaks a rule at ``line``) or ``failed`` (a
    pending file failed when it was run on a copy of the database, at
    ``line`` when a statement did); ``message`` is what the run would raise.
    """

    kind: ProblemKind
    name: str
    line: int | None
    message: str


@dataclass(frozen=True, slots=True)
class PlannedMigration:
    """One pending file as ``run_migrations`` would run it.

    ``statements`` is how many statements would run, ``transaction`` whether
    in one transaction (False for a ``-- cf-db: no-transaction`` file) and
    ``foreign_keys_checked`` whether enforcement would be switched off and
    the touched tables checked. ``problem`` is why the runner would refuse or
    fail the file, None otherwise. ``seconds`` is how long it took on a copy
    of the database (``execute=True``), None when it was not run there.
    """

    name: str
    statements: int
    transaction: bool
    foreign_keys_checked: bool
    problem: MigrationProblem | None
    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """What ``run_migrations`` would do now, and everything that would stop it.

    ``pending`` in the order they would run; ``problems`` every reason the
    run would be refused (while there is a ``modified`` or ``refused`` one,
    nothing would be applied) or would fail (the files before a ``failed``
    one would be applied); ``notes`` what it would only warn about (a missing
    file, a file that sorts before an applied one, an ``ADD COLUMN`` whose
    column is already there) and which files the dry run did not run.
    ``executed`` says whether the files were run on a copy.
    """

    pending: tuple[PlannedMigration, ...]
    problems: tuple[MigrationProblem, ...]
    notes: tuple[str, ...]
    executed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the run would go through (also when there is nothing to apply)."""
        return not self.problems


def plan_migrations(
    db: DatabaseOrPath,
    migrations_dir: MigrationsDir,
    *,
    key: Key | None = None,
    execute: bool = False,
) -> MigrationPlan:
    """What ``run_migrations`` would apply, refuse and fail at; never writes the database.

    Reports everything at once where the run stops at the first problem:
    every applied file edited since, every pending file the runner would
    refuse. With ``execute=True`` every pending file is also applied, in
    order, to a private copy of the database (an empty one when the file does
    not exist), exactly as the runner applies it, so that a statement that
    fails (a misspelt table, a foreign key left dangling, a column already
    there with another type) is reported with its file and line; the copy is
    thrown away. It stops at the first file that fails or is refused, as the
    run would. ``db`` may be the path of a database file (with ``key`` if it
    is encrypted), which is only read and never created.
    """
    files = read_migrations(migrations_dir)
    if not isinstance(db, str | os.PathLike) and key is not None:
        raise TypeError("key= goes with a database path, not a connection")
    where = _label(db)
    if not execute:
        comparisons = compare(files, _recorded(db, key))
        return _judged(comparisons, _pending_plans(comparisons), None, where)
    with scratch_copy(db, key, where) as scratch:
        comparisons = compare(files, read_records(scratch.db)[0])
        plans = _pending_plans(comparisons)
        rehearsal = rehearse(scratch, files, plans.values())
    return _judged(comparisons, plans, rehearsal, where)


def _pending_plans(comparisons: list[Comparison]) -> dict[str, FilePlan]:
    """Each pending file's plan, by name, in the order they would run."""
    return {c.name: examine(c.file) for c in comparisons if c.state == "pending" and c.file}


def _label(db: DatabaseOrPath) -> str:
    if isinstance(db, str | os.PathLike):
        return os.path.abspath(db)
    return runner_label(database_path(db))


def _judged(
    comparisons: list[Comparison],
    plans: dict[str, FilePlan],
    rehearsal: Rehearsal | None,
    where: str,
) -> MigrationPlan:
    """The plan from the comparison, with what the rehearsal found when there was one."""
    problems = [
        MigrationProblem(
            "modified",
            name,
            None,
            f"applied migration {name} was edited since it was applied; migrate refuses to run "
            f"anything until the applied text is restored (put the change in a new file).",
        )
        for name in named(comparisons, "modified")
    ]
    notes = [
        f"{name} is recorded as applied but its file is gone; never delete an applied migration"
        for name in named(comparisons, "missing")
    ]
    pending = []
    not_run: list[str] = []
    for comparison in comparisons:
        if comparison.state != "pending" or comparison.file is None:
            continue
        plan = plans[comparison.name]
        problem = None
        seconds = None
        if plan.refusals:
            error = plan.refusals[0].error(comparison.file, where)
            problem = MigrationProblem("refused", comparison.name, error.line, str(error))
            problems.append(problem)
        elif rehearsal is not None and rehearsal.failed and rehearsal.failed[0] == comparison.name:
            failure = rehearsal.failed[1]
            line = getattr(failure, "line", None) or None
            problem = MigrationProblem("failed", comparison.name, line, str(failure))
            problems.append(problem)
        elif rehearsal is not None:
            seconds = rehearsal.seconds.get(comparison.name)
            if seconds is None:
                not_run.append(comparison.name)
        pending.append(
            PlannedMigration(
                comparison.name,
                len(plan.statements),
                not comparison.file.no_transaction,
                plan.foreign_keys_off,
                problem,
                seconds,
            )
        )
    notes += [
        f"{name} sorts before the already applied {latest}; it would be applied anyway"
        for name, latest in out_of_order(comparisons)
    ]
    if rehearsal is not None:
        notes += [skipped.message(would=True) for skipped in rehearsal.skipped]
        stop = rehearsal.stopped_at or (rehearsal.failed[0] if rehearsal.failed else None)
        if not_run and stop is not None:
            notes.append(
                f"not run on the copy, since the run stops at {stop}: {', '.join(not_run)}"
            )
    return MigrationPlan(tuple(pending), tuple(problems), tuple(notes), rehearsal is not None)


# -- reading the records -------------------------------------------------------------


def _recorded(db: DatabaseOrPath, key: Key | None) -> dict[str, Record]:
    """The rows of ``_migrations``; none for a database file that does not exist."""
    with _reading(db, key) as connection:
        return {} if connection is None else read_records(connection)[0]


@contextlib.contextmanager
def _reading(db: DatabaseOrPath, key: Key | None) -> Iterator[sqlite3.Connection | None]:
    """The connection to read; a path opened read-only and closed after, None if absent."""
    if not isinstance(db, str | os.PathLike):
        if key is not None:
            raise TypeError("key= goes with a database path, not a connection")
        yield db
        return
    if not os.path.lexists(db):
        yield None
        return
    connection = get_db(db, readonly=True, key=key)
    try:
        yield connection
    finally:
        connection.close()
