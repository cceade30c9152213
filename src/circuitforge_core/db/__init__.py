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
import typing as _typing

from .aio import AsyncConnection, AsyncTransaction, FetchedCursor
from .asgi import (
    CancelOnDisconnect,
    DatabaseMiddleware,
    async_database_dependency,
    database_dependency,
    database_lifespan,
)
from .base import get_connection
from .cipher import derive_user_key
from .connect import Connection, get_db
from .conversions import decrypt_database, encrypt_database, rekey_database
from .errors import (
    BackupError,
    BaselineRefusedError,
    ControlSocketError,
    DBError,
    EncryptionUnavailableError,
    ExporterUnavailableError,
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
    StartupError,
    TransactionError,
    UnsafePathError,
)
from .fanout import (
    FanOutProgress,
    FanOutResult,
    TenantDatabase,
    TenantResult,
    drift_all,
    find_tenant_databases,
    migrate_all,
)
from .maintenance import (
    BackupResult,
    CheckResult,
    ForeignKeyProblem,
    backup_database,
    check_database,
)
from .migrations import (
    BaselineResult,
    ChecksumAccepted,
    ChecksumCheck,
    LintFinding,
    LintReport,
    MigrationCheckProblem,
    MigrationCheckReport,
    MigrationPlan,
    MigrationProblem,
    MigrationStatus,
    NewMigration,
    PlannedMigration,
    SchemaDifference,
    SchemaDrift,
    accept_checksum,
    baseline,
    check_migrations,
    lint_migrations,
    lint_report,
    migration_status,
    new_migration,
    plan_migrations,
    run_migrations,
    schema_drift,
    verify_migrations,
)
from .placement import Placement
from .pool import ConnectionPool, PoolRegistry
from .settings import Settings, ToolDefaults
from .startup import check_startup
from .tenancy import (
    current_db_path,
    request_aconnection,
    request_db,
    use_db,
    user_db_path,
    user_key_resolver,
)
from .transaction import transaction

if _typing.TYPE_CHECKING:
    from .replication import Replicator


def __getattr__(name: str) -> object:
    """``Replicator``, imported at first use: replication/ loads only where it is switched on."""
    if name == "Replicator":
        from .replication import Replicator

        return Replicator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncConnection",
    "AsyncTransaction",
    "BackupError",
    "BackupResult",
    "BaselineRefusedError",
    "BaselineResult",
    "CancelOnDisconnect",
    "CheckResult",
    "ChecksumAccepted",
    "ChecksumCheck",
    "Connection",
    "ConnectionPool",
    "ControlSocketError",
    "DBError",
    "DatabaseMiddleware",
    "EncryptionUnavailableError",
    "ExporterUnavailableError",
    "FanOutProgress",
    "FanOutResult",
    "FetchedCursor",
    "ForeignKeyProblem",
    "ForeignKeyViolationError",
    "LintFinding",
    "LintReport",
    "LitestreamNotFoundError",
    "MigrationCheckProblem",
    "MigrationCheckReport",
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
    "SchemaDifference",
    "SchemaDrift",
    "Settings",
    "SettingsError",
    "StartupError",
    "TenantDatabase",
    "TenantResult",
    "ToolDefaults",
    "TransactionError",
    "UnsafePathError",
    "accept_checksum",
    "async_database_dependency",
    "backup_database",
    "baseline",
    "check_database",
    "check_migrations",
    "check_startup",
    "current_db_path",
    "database_dependency",
    "database_lifespan",
    "decrypt_database",
    "derive_user_key",
    "drift_all",
    "encrypt_database",
    "find_tenant_databases",
    "get_connection",
    "get_db",
    "lint_migrations",
    "lint_report",
    "migrate_all",
    "migration_status",
    "new_migration",
    "plan_migrations",
    "rekey_database",
    "request_aconnection",
    "request_db",
    "run_migrations",
    "schema_drift",
    "transaction",
    "use_db",
    "user_db_path",
    "user_key_resolver",
    "verify_migrations",
]
