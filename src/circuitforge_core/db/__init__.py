"""circuitforge_core.db: the SQLite layer of every CircuitForge product.

    db = get_db("data/app.db")            # WAL, foreign keys, busy timeout
    run_migrations(db, "app/migrations")  # atomic, race-safe, checksummed
    with transaction(db):                 # BEGIN IMMEDIATE ... COMMIT
        ...

Depends on the standard library only.
"""

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
    OpenError,
    TransactionError,
)
from .migrations import MigrationStatus, migration_status, run_migrations
from .transaction import transaction

__all__ = [
    "Connection",
    "DBError",
    "EncryptionUnavailableError",
    "ForeignKeyViolationError",
    "MigrationError",
    "MigrationFailedError",
    "MigrationModifiedError",
    "MigrationRefusedError",
    "MigrationSourceError",
    "MigrationStatus",
    "OpenError",
    "TransactionError",
    "decrypt_database",
    "derive_user_key",
    "encrypt_database",
    "get_connection",
    "get_db",
    "migration_status",
    "rekey_database",
    "run_migrations",
    "transaction",
]
