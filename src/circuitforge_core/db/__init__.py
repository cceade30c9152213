"""circuitforge_core.db: the SQLite layer of every CircuitForge product.

    db = get_db("data/app.db")            # WAL, foreign keys, busy timeout
    run_migrations(db, "app/migrations")  # atomic, race-safe, checksummed
    with transaction(db):                 # BEGIN IMMEDIATE ... COMMIT
        ...

Depends on the standard library only.
"""

from .asgi import DatabaseMiddleware, database_dependency
from .base import get_connection
from .cipher import decrypt_database, derive_user_key, encrypt_database, rekey_database
from .connect import Connection, get_db
from .drift import SchemaDifference, SchemaDrift, schema_drift
from .errors import (
    BackupError,
    DBError,
    EncryptionUnavailableError,
    ForeignKeyViolationError,
    MigrationError,
    MigrationFailedError,
    MigrationModifiedError,
    MigrationRefusedError,
    MigrationSourceError,
    NoDatabaseError,
    OpenError,
    PoolClosedError,
    PoolTimeoutError,
    SettingsError,
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
from .lint import LintFinding, lint_migrations
from .maintenance import (
    BackupResult,
    CheckResult,
    ChecksumCheck,
    ForeignKeyProblem,
    backup_database,
    check_database,
    verify_migrations,
)
from .migration_check import MigrationCheckProblem, MigrationCheckReport, check_migrations
from .migrations import MigrationStatus, migration_status, run_migrations
from .pool import ConnectionPool
from .tenancy import (
    PoolRegistry,
    Settings,
    current_db_path,
    request_db,
    use_db,
    user_db_path,
    user_key_resolver,
)
from .transaction import transaction

__all__ = [
    "BackupError",
    "BackupResult",
    "CheckResult",
    "ChecksumCheck",
    "Connection",
    "ConnectionPool",
    "DBError",
    "DatabaseMiddleware",
    "EncryptionUnavailableError",
    "FanOutProgress",
    "FanOutResult",
    "ForeignKeyProblem",
    "ForeignKeyViolationError",
    "LintFinding",
    "MigrationCheckProblem",
    "MigrationCheckReport",
    "MigrationError",
    "MigrationFailedError",
    "MigrationModifiedError",
    "MigrationRefusedError",
    "MigrationSourceError",
    "MigrationStatus",
    "NoDatabaseError",
    "OpenError",
    "PoolClosedError",
    "PoolRegistry",
    "PoolTimeoutError",
    "SchemaDifference",
    "SchemaDrift",
    "Settings",
    "SettingsError",
    "TenantDatabase",
    "TenantResult",
    "TransactionError",
    "UnsafePathError",
    "backup_database",
    "check_database",
    "check_migrations",
    "current_db_path",
    "database_dependency",
    "decrypt_database",
    "derive_user_key",
    "drift_all",
    "encrypt_database",
    "find_tenant_databases",
    "get_connection",
    "get_db",
    "lint_migrations",
    "migrate_all",
    "migration_status",
    "rekey_database",
    "request_db",
    "run_migrations",
    "schema_drift",
    "transaction",
    "use_db",
    "user_db_path",
    "user_key_resolver",
    "verify_migrations",
]
