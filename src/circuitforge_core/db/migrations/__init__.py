"""Forward-only SQL migrations: a folder of ``NNN_name.sql`` files, applied once each.

Owns the ``_migrations`` bookkeeping table and the rules a migration file
must follow. Does not print, parse arguments, or pool connections. One
concern per module; each imports only modules listed above it:

    folder.py        list the folder (one filter), read, normalise, checksum; the next file
    locking.py       BEGIN IMMEDIATE past the busy timeout; the no-transaction lock file
    records.py       _migrations in any layout: read, adopt in place, record a file
    statements.py    inside a statement: table and column names, ADD COLUMN definitions
    plan.py          the verdicts: each file's rules and run plan; folder against records
    foreign_keys.py  enforcement off around rebuilds, then the touched tables checked
    columns.py       the old runner's recovery: an ADD COLUMN whose column is there
    connection_state.py  a file's pragmas, attachments and TEMP objects, put back after it
    shortcut.py      the repeated-call memory: nothing pending until something changes
    runner.py        run_migrations: apply each pending file atomically
    dry_run.py       the dry run's copy of the database and the files run on it
    views.py         read-only: migration_status, verify_migrations, plan_migrations
    drift.py         schema_drift: the live schema against a scratch build of its history
    repair.py        accept_checksum, baseline: an operator's deliberate fixes to the history
    lint.py          lint_migrations: the conventions, with a reason for each finding
    rehearsal.py     check_migrations: every file on an empty and a seeded scratch database

``_migrations`` keeps the layout products already have,
``(name TEXT PRIMARY KEY, applied_at TEXT DEFAULT CURRENT_TIMESTAMP)``, and
gains ``checksum`` and ``duration_ms`` columns in place. The names below
are the package's public surface; the modules' other names are its own.
"""

from .drift import SchemaDifference, SchemaDrift, drift_from, schema_drift
from .folder import (
    NO_TRANSACTION_MARKER,
    MigrationFile,
    MigrationsDir,
    NewMigration,
    new_migration,
    read_migrations,
)
from .lint import LintFinding, LintReport, lint_migrations, lint_report
from .locking import DEFAULT_LOCK_TIMEOUT
from .rehearsal import MigrationCheckProblem, MigrationCheckReport, check_migrations
from .repair import (
    BaselineResult,
    ChecksumAccepted,
    accept_checksum,
    baseline,
)
from .runner import run_migrations
from .views import (
    ChecksumCheck,
    ChecksumState,
    MigrationPlan,
    MigrationProblem,
    MigrationStatus,
    PlannedMigration,
    State,
    migration_status,
    plan_migrations,
    verify_migrations,
)

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "NO_TRANSACTION_MARKER",
    "BaselineResult",
    "ChecksumAccepted",
    "ChecksumCheck",
    "ChecksumState",
    "LintFinding",
    "LintReport",
    "MigrationCheckProblem",
    "MigrationCheckReport",
    "MigrationFile",
    "MigrationPlan",
    "MigrationProblem",
    "MigrationStatus",
    "MigrationsDir",
    "NewMigration",
    "PlannedMigration",
    "SchemaDifference",
    "SchemaDrift",
    "State",
    "accept_checksum",
    "baseline",
    "check_migrations",
    "drift_from",
    "lint_migrations",
    "lint_report",
    "migration_status",
    "new_migration",
    "plan_migrations",
    "read_migrations",
    "run_migrations",
    "schema_drift",
    "verify_migrations",
]
