"""Pooling: reusable connections to one file, and a registry of pools for many files.

The package owns connection reuse, from one pooled connection up to the app:

    connection.py  one pooled connection: the handles it gave out, its reset at
                   check-in, broken or replaced, closing it well, fork()
    budget.py      ConnectionBudget: the cap a group of pools shares, its lock,
                   the least-recently-used order of the group's idle connections
    file_pool.py   ConnectionPool: checkout and check-in for one file, the wait,
                   migrations once, a replaced file noticed
    registry.py    PoolRegistry: one pool per file for the app's lifetime, under
                   one budget; evict, drop_database, close

Imports point down that list: the registry uses pools and a budget, a pool uses
its budget and connection.py. Does not own which file a request uses, nor
per-user paths (tenancy.py), nor how a connection is opened (connect.get_db).
"""

from .budget import ConnectionBudget
from .connection import PooledConnection, RowFactory
from .file_pool import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    ConnectionPool,
    KeySource,
    PoolStats,
)
from .registry import (
    CLOUD_CONNECT_KWARGS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_DATABASE,
    MigrationsFor,
    PoolRegistry,
    RegistryStats,
)

__all__ = [
    "CLOUD_CONNECT_KWARGS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_DATABASE",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_POOL_TIMEOUT",
    "ConnectionBudget",
    "ConnectionPool",
    "KeySource",
    "MigrationsFor",
    "PoolRegistry",
    "PoolStats",
    "PooledConnection",
    "RegistryStats",
    "RowFactory",
]
