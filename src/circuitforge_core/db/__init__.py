"""circuitforge_core.db: the SQLite layer of every CircuitForge product.

    db = get_db("data/app.db")            # WAL, foreign keys, busy timeout
    run_migrations(db, "app/migrations")  # atomic, race-safe, checksummed
    with transaction(db):                 # BEGIN IMMEDIATE ... COMMIT
        ...

Depends on the standard library only.
"""

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
    StartupError,
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

__all__ = [
    "AsyncConnection",
    "AsyncTransaction",
    "BackupError",
    "BackupResult",
    "CancelOnDisconnect",
    "CheckResult",
    "ChecksumCheck",
    "Connection",
    "ConnectionPool",
    "ControlSocketError",
    "DBError",
    "DatabaseMiddleware",
    "EncryptionUnavailableError",
    "FetchedCursor",
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
    "Settings",
    "SettingsError",
    "StartupError",
    "TransactionError",
    "UnsafePathError",
    "async_database_dependency",
    "backup_database",
    "check_database",
    "check_startup",
    "current_db_path",
    "database_dependency",
    "database_lifespan",
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
    "request_aconnection",
    "request_db",
    "run_migrations",
    "transaction",
    "use_db",
    "user_db_path",
    "user_key_resolver",
    "verify_migrations",
]
