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
from .errors import (
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
from .migrations import MigrationStatus, migration_status, run_migrations
from .pool import ConnectionPool
from .tenancy import (
    PoolRegistry,
    Settings,
    current_db_path,
    request_db,
    use_db,
    user_db_path,
)
from .transaction import transaction

__all__ = [
    "Connection",
    "ConnectionPool",
    "DBError",
    "DatabaseMiddleware",
    "EncryptionUnavailableError",
    "ForeignKeyViolationError",
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
    "Settings",
    "SettingsError",
    "TransactionError",
    "UnsafePathError",
    "current_db_path",
    "database_dependency",
    "decrypt_database",
    "derive_user_key",
    "encrypt_database",
    "get_connection",
    "get_db",
    "migration_status",
    "rekey_database",
    "request_db",
    "run_migrations",
    "transaction",
    "use_db",
    "user_db_path",
]
