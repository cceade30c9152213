"""circuitforge_core.db: the SQLite layer of every CircuitForge product.

    db = get_db("data/app.db")            # WAL, foreign keys, busy timeout
    run_migrations(db, "app/migrations")  # atomic, race-safe, checksummed
    with transaction(db):                 # BEGIN IMMEDIATE ... COMMIT
        ...

Depends on the standard library only (pysqlite3 with ``CF_DB_SQLITE=bundled``).
"""

# ruff: noqa: E402 - the SQLite library is chosen before any other import of the package.
from .bundled_sqlite import apply_setting as _apply_sqlite_setting

_apply_sqlite_setting()  # CF_DB_SQLITE=bundled: pysqlite3 becomes the process's sqlite3

# isort: split
from .asgi import DatabaseMiddleware, database_dependency
from .base import get_connection
from .cipher import derive_user_key
from .connect import Connection, get_db
from .conversions import decrypt_database, encrypt_database, rekey_database
from .errors import (
    BackupError,
    ControlSocketError,
    DBError,
    EncryptionUnavailableError,
    ForeignKeyViolationError,
    LitestreamNotFoundError,
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationNameError,
    MigrationRefusedError,
    MigrationSourceError,
    NoDatabaseError,
    OpenError,
    PlacedElsewhereError,
    PoolClosedError,
    PoolTimeoutError,
    QuiescedError,
    ReplicaNotFoundError,
    ReplicationError,
    RestoreError,
    SettingsError,
    SQLiteLibraryError,
    TransactionError,
    UnsafePathError,
)
from .maintenance import (
    BackupResult,
    CheckResult,
    ForeignKeyProblem,
    backup_database,
    check_database,
)
from .migrations import (
    ChecksumCheck,
    LintFinding,
    LintReport,
    MigrationPlan,
    MigrationProblem,
    MigrationStatus,
    NewMigration,
    PlannedMigration,
    lint_migrations,
    lint_report,
    migration_status,
    new_migration,
    plan_migrations,
    run_migrations,
    verify_migrations,
)
from .placement import Placement
from .pool import ConnectionPool, PoolRegistry
from .replication import Replicator
from .settings import Settings
from .tenancy import current_db_path, request_db, use_db, user_db_path, user_key_resolver
from .transaction import transaction

__all__ = [
    "BackupError",
    "BackupResult",
    "CheckResult",
    "ChecksumCheck",
    "Connection",
    "ConnectionPool",
    "ControlSocketError",
    "DBError",
    "DatabaseMiddleware",
    "EncryptionUnavailableError",
    "ForeignKeyProblem",
    "ForeignKeyViolationError",
    "LintFinding",
    "LintReport",
    "LitestreamNotFoundError",
    "MigrationError",
    "MigrationFailedError",
    "MigrationModifiedError",
    "MigrationNameError",
    "MigrationPlan",
    "MigrationProblem",
    "MigrationRefusedError",
    "MigrationSourceError",
    "MigrationStatus",
    "NewMigration",
    "NoDatabaseError",
    "OpenError",
    "PlacedElsewhereError",
    "Placement",
    "PlannedMigration",
    "PoolClosedError",
    "PoolRegistry",
    "PoolTimeoutError",
    "QuiescedError",
    "ReplicaNotFoundError",
    "ReplicationError",
    "Replicator",
    "RestoreError",
    "SQLiteLibraryError",
    "Settings",
    "SettingsError",
    "TransactionError",
    "UnsafePathError",
    "backup_database",
    "check_database",
    "current_db_path",
    "database_dependency",
    "decrypt_database",
    "derive_user_key",
    "encrypt_database",
    "get_connection",
    "get_db",
    "lint_migrations",
    "lint_report",
    "migration_status",
    "new_migration",
    "plan_migrations",
    "rekey_database",
    "request_db",
    "run_migrations",
    "transaction",
    "use_db",
    "user_db_path",
    "user_key_resolver",
    "verify_migrations",
]
