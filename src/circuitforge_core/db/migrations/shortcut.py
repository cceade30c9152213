"""The repeated-call shortcut: a database and folder seen fully migrated stay so until they change.

Owns the process-wide memory of ``(database, folder)`` pairs that had
nothing pending and the signature that must be unchanged for that to still
hold. Products call ``run_migrations`` on every request, so a hit costs two
``stat`` calls, a folder listing and one ``PRAGMA schema_version``.
"""

from __future__ import annotations

import os
import sqlite3
import threading

from .folder import MigrationsDir

# (database path, folder key) -> signature of both when they were last seen
# fully migrated. A hit means nothing can be pending: the folder lists the
# same entries and its modification time is the same (adding, removing or
# renaming a file, or an editor saving by rename, changes both), and the
# database is the same file (device, inode) with the same schema cookie
# (every DDL bumps it; a restored backup would not share it; checkpoints do
# not touch it). One stat per file would also see in-place edits, but costs
# more than the old runner's whole call; such an edit is caught by the next
# call that finds the folder changed, before anything new is applied.
_up_to_date: dict[tuple[str | None, str], object] = {}
_up_to_date_guard = threading.Lock()
_UP_TO_DATE_KEPT = 4096  # cloud mode: thousands of files; the oldest are forgotten first

CacheKey = tuple[str | None, str]


def cache_key(db_path: str | None, migrations_dir: MigrationsDir) -> CacheKey:
    """Which database and which folder, as the memory files them."""
    if isinstance(migrations_dir, str | os.PathLike):
        return db_path, os.path.abspath(os.fspath(migrations_dir))
    return db_path, f"{type(migrations_dir).__qualname__}:{migrations_dir}"


def is_up_to_date(key: CacheKey, signature: object | None) -> bool:
    """Whether ``key`` was seen fully migrated with this very signature."""
    return signature is not None and _up_to_date.get(key) == signature


def remember_up_to_date(key: CacheKey, signature: object | None) -> None:
    """Remember that ``key`` had nothing pending, with the signature it had then."""
    if signature is None:
        return
    with _up_to_date_guard:
        _up_to_date.pop(key, None)  # re-inserted last: the dict's order is the age
        _up_to_date[key] = signature
        while len(_up_to_date) > _UP_TO_DATE_KEPT:
            del _up_to_date[next(iter(_up_to_date))]


def signature(
    db: sqlite3.Connection, db_path: str | None, migrations_dir: MigrationsDir
) -> object | None:
    """What must stay the same for a previous 'nothing pending' to still hold.

    None when it cannot be known (an in-memory database, a file that cannot be
    stat'ed): then there is no shortcut.
    """
    if db_path is None:
        return None
    try:
        db_stat = os.stat(db_path)
        if not isinstance(migrations_dir, str | os.PathLike):
            folder: object = ()  # a package resource that is not a plain folder: immutable
        else:
            # The raw listing, not list_folder's: any new entry must change the signature.
            folder = (os.stat(migrations_dir).st_mtime_ns, tuple(os.listdir(migrations_dir)))
    except OSError:
        return None
    schema_version = db.execute("PRAGMA schema_version").fetchone()[0]
    return (db_stat.st_dev, db_stat.st_ino, schema_version, folder)
