"""Erasing one user's file from its replica and Litestream's local state.

Litestream never deletes replica data, so without this an erased account
stays restorable, point in time included. Owns deleting the file's replica
(a ``file://`` replica's folder, with the user's folders above it once they
are empty; an ``s3://`` replica's prefix, every version of every object, see
s3.py) and Litestream's local state beside the file (``.<name>-litestream``),
and saying what was deleted; and, for a file nothing uses (``cf-db
erase``), all of that and the database's own files. Inside the service the
registry's ``drop_database`` deletes the database after ``erase_replica``.
Does not unregister the file from the daemon (the caller does that first, so
nothing is uploaded again).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

from ..errors import ReplicationError
from ..files import fsync, remove_quietly
from ..sqlite_facts import database_files
from .exclusive import DEFAULT_LOCK_WAIT, held_alone
from .restore import remove_litestream_state
from .s3 import delete_prefix
from .urls import UserFile, file_replica_folder, redact, replica_url_for

logger = logging.getLogger("circuitforge_core.db")


@dataclass(frozen=True, slots=True)
class ErasureResult:
    """What an erasure deleted: replica objects or files, and local folders."""

    path: str
    replica_url: str
    replica_objects: tuple[str, ...]
    local_state: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"{self.path}: {len(self.replica_objects)} replica object(s) deleted from "
            f"{self.replica_url}, {len(self.local_state)} local file(s) and folder(s) removed"
        )


def erase_replica(file: UserFile, base_url: str) -> ErasureResult:
    """Delete ``file``'s replica under ``base_url`` and Litestream's state beside it.

    Safe to repeat: a second run finds nothing and says so. Supported
    replicas: ``file://`` and ``s3://`` (any S3-compatible store); for other
    schemes ``ReplicationError`` says to delete the prefix by hand.
    """
    url = replica_url_for(base_url, file)
    scheme = url.split(":", 1)[0].lower()
    if scheme == "file":
        objects = _erase_folder(file_replica_folder(url), file_replica_folder(base_url))
    elif scheme == "s3":
        objects = delete_prefix(url)
    else:
        raise ReplicationError(
            f"erasing {scheme}:// replicas is not supported; delete {redact(url)} with the "
            f"storage's own tools.",
            path=file.path,
        )
    local = remove_litestream_state(file.path)
    result = ErasureResult(file.path, redact(url), tuple(objects), tuple(local))
    logger.info("erased %s", result.describe())
    return result


def erase_database(
    file: UserFile, base_url: str, *, lock_wait: float = DEFAULT_LOCK_WAIT
) -> ErasureResult:
    """Erase an account's file everywhere: replica, Litestream's state, the database itself.

    Refused (``ReplicationError``, nothing deleted) while any connection has
    the file open, Litestream's included. The replica goes first: if that
    fails, the local file is still there to retry with. ``local_state`` lists
    the local files and folders removed.
    """
    path = file.path
    if not os.path.exists(path):
        return erase_replica(file, base_url)  # erased here before, or never on this host
    with held_alone(path, doing="erased", error=ReplicationError, wait=lock_wait):
        replica = erase_replica(file, base_url)
        removed = remove_quietly(*database_files(path))
    fsync(os.path.dirname(path))
    result = ErasureResult(
        path, replica.replica_url, replica.replica_objects, (*replica.local_state, *removed)
    )
    logger.info("erased %s and the database", result.describe())
    return result


def _erase_folder(folder: str, base: str) -> list[str]:
    """Remove a file replica's folder; then its parents up to ``base`` that are left empty.

    Empty parents go too because their names are the user id and the
    product's sub-path, which may themselves be personal (an e-mail-like id).
    """
    if not os.path.isdir(folder):
        return []
    removed = [
        os.path.join(current, name)
        for current, _folders, names in os.walk(folder)
        for name in names
    ]
    shutil.rmtree(folder)
    parent = os.path.dirname(folder)
    base = os.path.normpath(base)
    while parent != base and parent.startswith(base + os.sep):
        try:
            os.rmdir(parent)
        except OSError:  # not empty: another product's or file's replica lives there
            break
        removed.append(parent + os.sep)
        parent = os.path.dirname(parent)
    return removed
